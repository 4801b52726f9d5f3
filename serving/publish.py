"""`loraplane adapters publish SRC NAME@vN`: publish an adapter made outside loraplane's trainer.

SRC is a plain PEFT directory (adapter_config.json + adapter_model.safetensors, as PEFT,
LLaMA-Factory, Unsloth or Axolotl write them) or one of ours that already has a manifest. For a
plain one the manifest is written here: the base is the served base, checked by name (the
adapter config's `base_model_name_or_path`, or `--base`) and by every LoRA tensor's shape against
the base's weights; dataset and eval are recorded as unknown. The result is validated by the
registry's own rules before it becomes visible, and written by `write_version`, the one atomic
writer of the serving side (docs/registry.md: temp dir, fsync each file, rename, fsync parent).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.errors import AdapterRejected, ServingError
from serving.registry import (
    ADAPTER_MANIFEST,
    PEFT_CONFIG,
    PEFT_FILES,
    PEFT_WEIGHTS,
    AdapterRef,
    AdapterRegistry,
    BaseInfo,
    name_problems,
    safetensors_header,
)

UNKNOWN = "unknown"


class PublishError(ServingError):
    """An adapter directory cannot be published (bad name, not servable, registry conflict)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(
    parent: Path,
    version: str,
    files: dict[str, Path],
    manifest: dict[str, Any],
    check: Callable[[Path], object] | None = None,
) -> Path:
    """Write parent/<version>/ atomically: `files` (name -> source) copied, plus the manifest.

    `check(tmp_dir)` runs on the complete temp directory before it is renamed into place; what it
    raises aborts the publish and leaves nothing behind.
    """
    target = parent / version
    if target.exists():
        raise PublishError(f"{target} already exists; versions are immutable, publish a new version")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        (tmp / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if check is not None:
            check(tmp)
        for written in tmp.iterdir():
            _fsync(written)
        tmp.chmod(0o755)
        _fsync(tmp)
        os.rename(tmp, target)  # atomic on one filesystem; refused if target appeared meanwhile
        _fsync(parent)
    except OSError as exc:
        raise PublishError(f"could not publish to {target}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def parse_target(model: str) -> tuple[str, str]:
    """'name@vN' -> (name, version), or PublishError naming the rule it breaks."""
    name, sep, version = model.partition("@")
    if not sep:
        raise PublishError(f"{model!r}: name the version to publish, e.g. {name}@v1")
    problems = name_problems(name, version)
    if problems:
        raise PublishError(f"cannot publish as {model!r}: " + "; ".join(map(str, problems)))
    return name, version


def _tensor_ints(path: Path, header: dict, key: str) -> list[int]:
    """The values of a small integer tensor (e.g. a packed weight's `weight_shape`)."""
    info = header[key]
    begin, end = info["data_offsets"]
    fmt = {"I64": "q", "I32": "i"}[info["dtype"]]
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + length + begin)
        raw = fh.read(end - begin)
    return list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))


def base_weight_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Module name -> weight shape [out, in] of every weight in the base's safetensors files."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        header = safetensors_header(file)
        for key, info in header.items():
            if key.endswith(".weight"):
                shapes[key.removesuffix(".weight")] = tuple(info["shape"])
            elif key.endswith(".weight_shape"):  # compressed-tensors packs quantized weights
                shapes[key.removesuffix(".weight_shape")] = tuple(_tensor_ints(file, header, key))
    return shapes


def shape_problems(adapter_weights: Path, base_dir: Path) -> list[str]:
    """Each LoRA pair must fit its base weight: lora_A [r, in], lora_B [out, r] for weight [out, in]."""
    base = base_weight_shapes(base_dir)
    problems = []
    for key, info in safetensors_header(adapter_weights).items():
        for part, side in (("lora_A", 1), ("lora_B", 0)):
            if not key.endswith(f".{part}.weight"):
                continue
            module = key.removeprefix("base_model.model.").removesuffix(f".{part}.weight")
            if module not in base:
                problems.append(f"{key}: the base has no weight {module}.weight")
            elif info["shape"][side] != base[module][0 if part == "lora_B" else 1]:
                dim = "output" if part == "lora_B" else "input"
                problems.append(f"{key} has shape {info['shape']}, but {module}.weight is {list(base[module])} ({dim})")
    return problems


def check_base_name(peft_config: dict[str, Any], base: BaseInfo, base_flag: str | None) -> None:
    """The adapter must name the served base (case and organisation prefix aside), or --base must."""
    served = {base.name.lower(), base.path.name.lower(), str(base.manifest.get("source_base", "")).lower()} - {""}
    if base_flag is not None:
        if base_flag.lower() not in served:
            raise PublishError(f"--base {base_flag!r} is not the served base {base.name!r}; pass --base {base.name}")
        return
    declared = str(peft_config.get("base_model_name_or_path") or "")
    if Path(declared).name.lower() not in served:
        raise PublishError(
            f"{PEFT_CONFIG} names base {declared or '<none>'!r}, but the served base is {base.name!r}; "
            f"if it was trained on this base under another name, pass --base {base.name}"
        )


def outside_manifest(name: str, version: str, peft_config: dict[str, Any], base: BaseInfo) -> dict[str, Any]:
    targets = peft_config.get("target_modules") or []
    return {
        "format": 1,
        "name": name,
        "version": version,
        "base": {"name": base.name, "weights_sha256": base.weights_sha256, "checked_by": "name and tensor shapes"},
        "lora": {
            "r": peft_config.get("r"),
            "alpha": peft_config.get("lora_alpha"),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "rslora": bool(peft_config.get("use_rslora")),
        },
        "dataset": {"train": UNKNOWN, "sha256": UNKNOWN},
        "config": {"trainer": UNKNOWN},
        "eval": {"metric": UNKNOWN, "value": None},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _manifest_for(src: Path, name: str, version: str, registry: AdapterRegistry, base_flag: str | None) -> dict:
    if (src / ADAPTER_MANIFEST).is_file() and base_flag is None:  # ours: the manifest pins the base checksum
        return {**json.loads((src / ADAPTER_MANIFEST).read_text()), "name": name, "version": version}
    peft_config = json.loads((src / PEFT_CONFIG).read_text())
    check_base_name(peft_config, registry.base, base_flag)
    problems = shape_problems(src / PEFT_WEIGHTS, registry.base.path)
    if problems:
        raise PublishError(f"{src} does not fit base {registry.base.name!r}: " + "; ".join(problems[:5]))
    return outside_manifest(name, version, peft_config, registry.base)


def publish_adapter_dir(registry: AdapterRegistry, src: Path, model: str, base_flag: str | None = None) -> Path:
    """Validate `src` as `model` ('name@vN') against the served base and publish it; return its path."""
    name, version = parse_target(model)
    missing = [f for f in PEFT_FILES if not (src / f).is_file()]
    if missing:
        raise PublishError(f"{src} has no {', '.join(missing)}; a PEFT adapter directory holds {', '.join(PEFT_FILES)}")
    try:
        manifest = _manifest_for(src, name, version, registry, base_flag)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"cannot read {src}: {exc}") from None

    def check(tmp: Path) -> None:
        try:
            registry.validate(AdapterRef(name, version), path=tmp)
        except AdapterRejected as exc:
            raise PublishError(f"refusing to publish: {exc.message}") from None

    return write_version(registry.adapters_dir / name, version, {f: src / f for f in PEFT_FILES}, manifest, check)
