"""`loraplane quantize`: a registry base -> a GPTQ / AWQ 4-bit (or int8) base vLLM loads.

    loraplane quantize --method gptq --bits 4 --group-size 64 --calib data/demo/train.jsonl

writes models/<base>-gptq-w4/: a compressed-tensors checkpoint plus `loraplane-base.json` that
records the source base's checksum (`source_weights_sha256`), so adapters trained on the
full-precision base are accepted on it. Everything is checked here, before any minute of
calibration is spent: method and bits, group size against every layer width, the calibration file.
The quantizer (llm-compressor) lives in .venv-quant, apart from .venv because its pins clash with
vLLM's; this module starts `trainer.quantize_worker` there and creates it on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.base_models import MANIFEST_NAME, read_manifest, resolve_base, weights_sha256
from trainer.errors import BaseModelError, ConfigError, DataError, TrainerError
from trainer.publish import move_into_place

REPO_ROOT = Path(__file__).resolve().parents[1]
QUANT_VENV = Path(".venv-quant")  # relative to the repo root
SETUP_SCRIPT = Path("scripts/setup-quant.sh")
QUANTIZER = "llmcompressor 0.14.0.1"
# method -> weight bits it supports. int8 = W8A8: int8 weights and dynamic int8 activations.
SUPPORTED_BITS: dict[str, tuple[int, ...]] = {"gptq": (4,), "awq": (4,), "int8": (8,)}
NEEDS_CALIBRATION = {"gptq", "awq"}
GROUPED = {"gptq", "awq"}  # int8 W8A8 scales per output channel: no group size


@dataclass(frozen=True)
class QuantizeOptions:
    base: str = "smollm2-135m-instruct"  # registry name under models_dir, or a local HF dir
    method: str = "gptq"
    bits: int = 4
    group_size: int = 128  # weights per scale; must divide every quantized layer's input width
    calib: Path = Path("data/demo/train.jsonl")  # local JSONL: chat {"messages"} or {"text"} rows
    num_samples: int = 64  # calibration rows (the first N)
    max_seq_len: int = 256  # tokens per calibration row
    awq_grid: int = 20  # AWQ only: scale ratios tried per layer group (llm-compressor's n_grid); cost ~linear
    name: str | None = None  # output base name; None = <base>-<method>-w<bits>
    models_dir: Path = Path("models")
    quant_venv: Path = QUANT_VENV
    setup: bool = True  # create .venv-quant with scripts/setup-quant.sh when it is missing
    force: bool = False

    def __post_init__(self) -> None:
        if self.method not in SUPPORTED_BITS:
            raise ConfigError(f"--method {self.method!r} is not supported; choose one of: {_supported()}")
        if self.bits not in SUPPORTED_BITS[self.method]:
            raise ConfigError(
                f"--bits {self.bits} is not supported for --method {self.method}; supported: {_supported()}"
            )
        if self.group_size < 1:
            raise ConfigError(f"--group-size {self.group_size} must be a positive integer (e.g. 64 or 128)")
        # llm-compressor's AWQ grid divides by (n_grid - 2): 2 points crash it with ZeroDivisionError
        if self.num_samples < 1 or self.max_seq_len < 8 or self.awq_grid < 3:
            raise ConfigError("--num-samples must be >= 1, --max-seq-len >= 8 and --awq-grid >= 3")

    def output_name(self, base_name: str) -> str:
        suffix = "int8-w8a8" if self.method == "int8" else f"{self.method}-w{self.bits}"
        return self.name or f"{base_name}-{suffix}"


def _supported() -> str:
    return ", ".join(f"{m} (bits {'/'.join(map(str, b))})" for m, b in SUPPORTED_BITS.items())


def linear_input_widths(model_dir: Path) -> dict[str, int]:
    """Input width (columns) of every 2-D `*.weight` a quantizer targets, from safetensors headers.

    Reads only the JSON header of each file (no torch). Embeddings and lm_head are skipped: they
    stay full precision.
    """
    widths: dict[str, int] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        for tensor, info in header.items():
            shape = info.get("shape", []) if isinstance(info, dict) else []
            skip = "embed" in tensor or "lm_head" in tensor
            if tensor.endswith(".weight") and len(shape) == 2 and not skip:
                widths[tensor.removesuffix(".weight")] = shape[1]
    if not widths:
        raise BaseModelError(f"{model_dir}: found no 2-D linear weights in *.safetensors to quantize")
    return widths


def check_group_size(widths: dict[str, int], group_size: int) -> None:
    """Every quantized layer's input width must be a multiple of the group size."""
    bad = {layer: w for layer, w in widths.items() if w % group_size}
    if not bad:
        return
    distinct = sorted(set(widths.values()))
    fits = [g for g in (256, 128, 64, 32, 16) if all(w % g == 0 for w in distinct)]
    example_layer, example_width = next(iter(bad.items()))
    raise ConfigError(
        f"--group-size {group_size} does not divide the layer widths of this model: {example_width} is "
        f"not a multiple of {group_size} (e.g. {example_layer}; {len(bad)} of {len(widths)} layers). "
        f"Layer widths: {distinct}; group sizes that fit: {', '.join(map(str, fits)) or 'none'}"
    )


def load_calibration(path: Path, num_samples: int) -> tuple[list[dict], str]:
    """The first `num_samples` rows of a local JSONL file, and the file's sha256."""
    if not path.is_file():
        raise DataError(f"calibration set {path} does not exist; pass a local JSONL file with --calib")
    raw = path.read_bytes()
    samples: list[dict] = []
    for lineno, line in enumerate(raw.decode().splitlines(), 1):
        if len(samples) == num_samples:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            samples.append({"messages": row["messages"]})
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            samples.append({"text": row["text"]})
        else:
            raise DataError(f"{path}:{lineno}: a calibration row needs 'messages' (chat) or 'text'")
    if not samples:
        raise DataError(f"calibration set {path} has no rows")
    return samples, hashlib.sha256(raw).hexdigest()


def quant_python(opts: QuantizeOptions) -> Path:
    """.venv-quant's python, creating the environment first if allowed."""
    venv = opts.quant_venv if opts.quant_venv.is_absolute() else REPO_ROOT / opts.quant_venv
    python = venv / "bin" / "python"
    how = f"run `make setup-quant` (it runs {SETUP_SCRIPT}, which creates {opts.quant_venv} with {QUANTIZER})"
    if not python.is_file():
        if not opts.setup:
            raise TrainerError(f"the quantizer ({QUANTIZER}) is not installed: no {opts.quant_venv}; {how}")
        print(f"quantize: {opts.quant_venv} is missing; creating it with {SETUP_SCRIPT} (once)", flush=True)
        env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
        if subprocess.run(["bash", str(REPO_ROOT / SETUP_SCRIPT)], cwd=REPO_ROOT, env=env).returncode:
            raise TrainerError(f"{SETUP_SCRIPT} failed (see its output above); fix it, then {how}")
    probe = subprocess.run([str(python), "-c", "import llmcompressor"], capture_output=True, text=True)
    if probe.returncode:
        raise TrainerError(f"{opts.quant_venv} cannot import llmcompressor; {how}")
    return python


def _manifest(opts: QuantizeOptions, name: str, source_dir: Path, out: Path, calib_sha: str, n: int) -> dict:
    source = read_manifest(source_dir)
    config = json.loads((out / "config.json").read_text())
    qcfg = config.get("quantization_config", {})
    quant = {
        "method": opts.method,
        "bits": opts.bits,
        "group_size": None if opts.method == "int8" else opts.group_size,
        "format": qcfg.get("format"),
        "tool": QUANTIZER,
        **({"awq_grid": opts.awq_grid} if opts.method == "awq" else {}),
        "calibration": None
        if opts.method not in NEEDS_CALIBRATION
        else {"path": str(opts.calib), "sha256": calib_sha, "num_samples": n, "max_seq_len": opts.max_seq_len},
    }
    return {
        "format": 1,
        "name": name,
        "architecture": (config.get("architectures") or ["?"])[0],
        "dtype": str(config.get("dtype") or config.get("torch_dtype")),
        "source": f"quantize:{source.get('name', source_dir.name)}",
        "weights_sha256": weights_sha256(out),
        "source_base": source.get("name", source_dir.name),
        "source_weights_sha256": source["weights_sha256"],
        "quantization": quant,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def quantize(opts: QuantizeOptions) -> Path:
    """Validate everything, run the worker in .venv-quant, publish models/<name>/ atomically."""
    source_dir = resolve_base(opts.base, opts.models_dir)
    source_manifest = read_manifest(source_dir)
    if "source_weights_sha256" in source_manifest:
        raise BaseModelError(f"{source_dir} is already quantized; quantize its full-precision source instead")
    if opts.method in GROUPED:
        check_group_size(linear_input_widths(source_dir), opts.group_size)
    samples, calib_sha = (
        ([], "") if opts.method not in NEEDS_CALIBRATION else load_calibration(opts.calib, opts.num_samples)
    )
    name = opts.output_name(source_manifest.get("name", source_dir.name))
    target = opts.models_dir / name
    if target.exists() and not opts.force:
        raise BaseModelError(f"{target} exists; pass --force to replace it or --name to pick another name")
    python = quant_python(opts)

    started = time.monotonic()
    opts.models_dir.mkdir(parents=True, exist_ok=True)  # a new --models-dir is created, not a traceback
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=opts.models_dir))
    try:
        job = {
            "source_dir": str(source_dir.resolve()),
            "output_dir": str(tmp.resolve()),
            "method": opts.method,
            "bits": opts.bits,
            "group_size": opts.group_size,
            "max_seq_len": opts.max_seq_len,
            "awq_grid": opts.awq_grid,
            "samples": samples,
        }
        job_file = tmp / "job.json"
        job_file.write_text(json.dumps(job))
        print(
            f"quantize: {source_dir.name} -> {target} ({opts.method}, {opts.bits}-bit, "
            f"group size {opts.group_size}, {len(samples)} calibration rows) in {opts.quant_venv}",
            flush=True,
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
        cmd = [str(python), "-m", "trainer.quantize_worker", str(job_file)]
        if subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode:
            raise TrainerError(f"the quantizer failed for {source_dir.name} (see its output above)")
        job_file.unlink()
        manifest = _manifest(opts, name, source_dir, tmp, calib_sha, len(samples))
        move_into_place(tmp, target, MANIFEST_NAME, manifest, replace=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"quantize: {name} ready at {target} in {time.monotonic() - started:.0f} s "
        f"(sha256 {manifest['weights_sha256'][:12]}, source {manifest['source_weights_sha256'][:12]})"
    )
    return target


def parse_args(argv: list[str]) -> QuantizeOptions:
    d = QuantizeOptions()
    p = argparse.ArgumentParser(prog="loraplane quantize", description=__doc__.splitlines()[0])
    p.add_argument("--base", default=d.base, help="registry base name or local HF directory")
    p.add_argument("--method", default=d.method, help=f"one of: {_supported()}")
    p.add_argument("--bits", type=int, default=d.bits)
    p.add_argument("--group-size", type=int, default=d.group_size, help="must divide every layer width")
    p.add_argument("--calib", type=Path, default=d.calib, help="local JSONL calibration set")
    p.add_argument("--num-samples", type=int, default=d.num_samples)
    p.add_argument("--max-seq-len", type=int, default=d.max_seq_len)
    p.add_argument("--awq-grid", type=int, default=d.awq_grid, help="AWQ scale search points (time ~ linear)")
    p.add_argument("--name", default=d.name, help="output base name (default <base>-<method>-w<bits>)")
    p.add_argument("--models-dir", type=Path, default=d.models_dir)
    p.add_argument("--quant-venv", type=Path, default=d.quant_venv, help="the quantizer's environment")
    p.add_argument("--no-setup", dest="setup", action="store_false", help="never create the environment")
    p.add_argument("--force", action="store_true", help="replace an existing output base")
    return QuantizeOptions(**vars(p.parse_args(argv)))


def main(argv: list[str]) -> int:
    try:
        quantize(parse_args(argv))
    except TrainerError as exc:
        print(f"loraplane quantize: error: {exc}", file=sys.stderr)
        return 2
    return 0
