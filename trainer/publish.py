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
from trainer.registry_contract import ADAPTER_MANIFEST, PEFT_FILES, adapter_dir_problems, servability_problems

MANIFEST_NAME = ADAPTER_MANIFEST  # re-exported for trainer.merge and tests


def check_servable(adapter_config: dict[str, Any], max_lora_rank: int) -> None:
    problems = servability_problems(adapter_config, max_lora_rank)
    if problems:
        raise PublishError("refusing to publish an adapter vLLM cannot load: " + "; ".join(map(str, problems)))


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(tmp: Path, target: Path, manifest_name: str, manifest: dict[str, Any], replace: bool) -> None:
    """The trainer's one atomic writer: write the manifest into the complete `tmp` dir, fsync every
    file and the dir, rename it to `target` (first removing an old one when `replace`), fsync the parent.
    """
    (tmp / manifest_name).write_text(json.dumps(manifest, indent=2) + "\n")
    for file in tmp.iterdir():
        _fsync_file(file)
    tmp.chmod(0o755)
    _fsync_dir(tmp)
    if replace and target.exists():
        shutil.rmtree(target)
    if target.exists():  # someone published the same name while we wrote
        raise PublishError(f"{target} appeared while publishing; choose a new name or version")
    os.rename(tmp, target)  # atomic on one filesystem
    _fsync_dir(target.parent)


def publish_adapter(
    adapter_dir: Path,
    adapters_dir: Path,
    name: str,
    version: str,
    manifest: dict[str, Any],
    max_lora_rank: int,
    base_manifest: dict[str, Any] | None = None,
) -> Path:
    """Copy a saved PEFT adapter + manifest into the registry atomically; return the version dir.

    `base_manifest` (the trained-on base's loraplane-base.json) also checks the manifest's base pin.
    """
    problems = adapter_dir_problems(adapter_dir, name, version, max_lora_rank, manifest, base_manifest)
    if problems:
        raise PublishError(f"refusing to publish {name}@{version}: " + "; ".join(map(str, problems)))
    parent = adapters_dir / name
    target = parent / version
    if target.exists():
        raise PublishError(f"{target} already exists; published versions are immutable, choose a new --publish.version")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for file in PEFT_FILES:
            shutil.copyfile(adapter_dir / file, tmp / file)
        manifest = {**manifest, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        move_into_place(tmp, target, ADAPTER_MANIFEST, manifest, replace=False)
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
    chat_template: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The loraplane-adapter.json body (created_at is added at publish time).

    `chat_template` ({"source", "sha256"}, trainer.tokens.template_record) names the template the
    adapter was trained with; serving applies the same one (docs/tools.md).
    """
    return {
        "format": 1,
        "name": name,
        "version": version,
        "base": base,
        "lora": lora,
        "dataset": dataset,
        "config": config,
        "eval": eval_result,
        "chat_template": chat_template,
    }
