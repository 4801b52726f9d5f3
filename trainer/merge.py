"""`loraplane merge --adapter adapters/NAME/VERSION --out models/NAME-merged`: fold LoRA into the base.

The result is a plain Hugging Face checkpoint (no PEFT needed; vLLM serves it without LoRA) plus
`loraplane-base.json`, so it is itself a registry base. The base is always loaded unquantized:
a QLoRA adapter is merged into the full-precision base it was trained against, never into 4-bit
weights. The merge is computed in float32 and saved in the base's dtype unless --dtype says
otherwise. The adapter's manifest pins the base checksum; a different base is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from trainer.base_models import MANIFEST_NAME as BASE_MANIFEST
from trainer.base_models import read_manifest, resolve_base, weights_sha256
from trainer.errors import TrainerError
from trainer.publish import MANIFEST_NAME as ADAPTER_MANIFEST
from trainer.publish import move_into_place

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def read_adapter(adapter_dir: Path) -> dict:
    path = adapter_dir / ADAPTER_MANIFEST
    if not path.is_file():
        raise TrainerError(f"{adapter_dir} has no {ADAPTER_MANIFEST}; pass a published adapters/NAME/VERSION dir")
    return json.loads(path.read_text())


def check_base(base_dir: Path, adapter: dict) -> dict:
    """The base manifest, after checking it is the exact base the adapter was trained on."""
    manifest = read_manifest(base_dir)
    want = adapter["base"]["weights_sha256"]
    if manifest["weights_sha256"] != want:
        raise TrainerError(
            f"base {base_dir} has weights_sha256 {manifest['weights_sha256'][:12]}, but the adapter was "
            f"trained on {want[:12]}; pass the matching base with --base"
        )
    return manifest


def base_dtype(base_dir: Path, manifest: dict) -> str:
    """The dtype the base is stored in (torch name), from its manifest or config.json."""
    config = json.loads((base_dir / "config.json").read_text())
    return str(manifest.get("dtype") or config.get("dtype") or config.get("torch_dtype") or "float32")


def merge(adapter_dir: Path, out_dir: Path, models_dir: Path, base: str | None, dtype: str | None, force: bool) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = read_adapter(adapter_dir)
    base_dir = resolve_base(base or adapter["base"]["name"], models_dir)
    base_manifest = check_base(base_dir, adapter)
    if out_dir.exists() and not force:
        raise TrainerError(f"{out_dir} already exists; choose another --out or pass --force")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)  # never quantized
    save_dtype = TORCH_DTYPES[dtype] if dtype else base_dtype(base_dir, base_manifest)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged = merged.to(getattr(torch, save_dtype))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        manifest = {
            "format": 1,
            "name": out_dir.name,
            "architecture": merged.config.architectures[0],
            "dtype": save_dtype,
            "source": f"merge:{adapter['name']}@{adapter['version']}+{base_manifest.get('name', base_dir.name)}",
            "weights_sha256": weights_sha256(tmp),
            "merged_from": {"adapter": {k: adapter[k] for k in ("name", "version", "lora")}, "base": adapter["base"]},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        move_into_place(tmp, out_dir, BASE_MANIFEST, manifest, replace=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loraplane merge", description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True, help="a published adapters/NAME/VERSION dir")
    parser.add_argument("--out", type=Path, required=True, help="output dir, e.g. models/NAME-merged")
    parser.add_argument("--models-dir", "--models_dir", type=Path, default=Path("models"))
    parser.add_argument("--base", help="base name or dir (default: the one in the adapter manifest)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="saved dtype (default: the base's)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        out = merge(args.adapter, args.out, args.models_dir, args.base, args.dtype, args.force)
    except TrainerError as exc:
        print(f"loraplane merge: error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {args.adapter} into {out}")
    return 0
