"""Publish a trained adapter into the registry: adapters/<name>/<version>/ (see docs/registry.md).

Everything is written into adapters/<name>/.tmp-<version>-<random>/, each file fsynced, then the
directory is renamed into place and the parent fsynced: readers see no version or a whole one.
Adapters the serving engine (vLLM) cannot load are refused with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.errors import PublishError

MANIFEST_NAME = "loraplane-adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def servability_problems(adapter_config: dict[str, Any], max_lora_rank: int) -> list[str]:
    """Why vLLM would refuse this PEFT adapter config (empty list: it can serve it)."""
    problems = []
    if adapter_config.get("modules_to_save"):
        problems.append(
            f"modules_to_save={adapter_config['modules_to_save']} (vLLM loads only LoRA matrices; "
            "set lora.modules_to_save to [])"
        )
    if adapter_config.get("use_dora"):
        problems.append("DoRA (vLLM cannot serve DoRA adapters; set lora.use_dora false)")
    rank = int(adapter_config.get("r", 0))
    if rank > max_lora_rank:
        problems.append(
            f"rank {rank} > max_lora_rank {max_lora_rank} (the engine's --max-lora-rank; "
            "lower lora.r or raise publish.max_lora_rank together with the server's limit)"
        )
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_config['peft_type']} (only LORA adapters are served)")
    return problems


def check_servable(adapter_config: dict[str, Any], max_lora_rank: int) -> None:
    problems = servability_problems(adapter_config, max_lora_rank)
    if problems:
        raise PublishError("refusing to publish an adapter vLLM cannot load: " + "; ".join(problems))


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_adapter(
    adapter_dir: Path, adapters_dir: Path, name: str, version: str, manifest: dict[str, Any], max_lora_rank: int
) -> Path:
    """Copy a saved PEFT adapter + manifest into the registry atomically; return the version dir."""
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise PublishError(f"{adapter_dir} lacks {', '.join(missing)}; is it a saved PEFT adapter?")
    check_servable(json.loads((adapter_dir / "adapter_config.json").read_text()), max_lora_rank)
    parent = adapters_dir / name
    target = parent / version
    if target.exists():
        raise PublishError(f"{target} already exists; published versions are immutable, choose a new --publish.version")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for file in ADAPTER_FILES:
            shutil.copyfile(adapter_dir / file, tmp / file)
        manifest = {**manifest, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        for file in tmp.iterdir():
            _fsync_file(file)
        _fsync_dir(tmp)
        if target.exists():  # someone published the same version while we copied
            raise PublishError(f"{target} appeared while publishing; choose a new --publish.version")
        os.rename(tmp, target)  # atomic on one filesystem; fails if target is a non-empty dir
        _fsync_dir(parent)
    except OSError as exc:
        raise PublishError(f"could not publish to {target}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_manifest(
    *,
    name: str,
    version: str,
    base: dict[str, str],
    lora: dict[str, Any],
    dataset: dict[str, str],
    config: dict[str, Any],
    eval_result: dict[str, Any],
) -> dict[str, Any]:
    """The loraplane-adapter.json body (created_at is added at publish time)."""
    return {
        "format": 1,
        "name": name,
        "version": version,
        "base": base,
        "lora": lora,
        "dataset": dataset,
        "config": config,
        "eval": eval_result,
    }
