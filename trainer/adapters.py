"""Existing adapters as inputs: `lora.init_from` (continue training) and adapter teachers.

A reference is a directory (`adapters/NAME/vN`, or a run's `out_dir/adapter`) or `NAME@vN`
(looked up in publish.adapters_dir). It must hold a saved PEFT adapter; its manifest
(loraplane-adapter.json, written both by publish and beside a run's adapter) names the base
checksum, which must equal the base we train on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

MANIFEST_NAME = "loraplane-adapter.json"  # the same file name trainer.publish writes
REF_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})@(?P<version>v[0-9]{1,6})$")


@dataclass
class AdapterRef:
    path: Path
    source: str  # as the user wrote it
    manifest: dict[str, Any]  # {} when the directory has none
    adapter_config: dict[str, Any]

    @property
    def parent(self) -> dict[str, Any]:
        """What an adapter trained from this one records as its `parent` in the manifest."""
        return {"name": self.manifest.get("name"), "version": self.manifest.get("version"), "source": self.source}


def resolve_adapter(ref: str, adapters_dir: Path, key: str) -> AdapterRef:
    """Find and read the adapter `ref` names; `key` (e.g. lora.init_from) is named in errors."""
    match = REF_RE.match(ref)
    path = adapters_dir / match["name"] / match["version"] if match else Path(ref)
    if not (path / "adapter_config.json").is_file() or not (path / "adapter_model.safetensors").is_file():
        raise ConfigError(
            f"{key}: {ref!r} is not a saved PEFT adapter ({path} lacks adapter_config.json or "
            "adapter_model.safetensors); give adapters/NAME/vN, NAME@vN or a run's adapter dir"
        )
    manifest_file = path / MANIFEST_NAME
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    return AdapterRef(path, ref, manifest, json.loads((path / "adapter_config.json").read_text()))


def check_same_base(adapter: AdapterRef, base_manifest: dict[str, Any], base_dir: Path, key: str) -> None:
    """An adapter trained on another base must not be continued or used as a teacher here."""
    theirs = (adapter.manifest.get("base") or {}).get("weights_sha256")
    ours = base_manifest.get("weights_sha256")
    if theirs is None:
        name = adapter.adapter_config.get("base_model_name_or_path")
        if name not in (base_manifest.get("name"), base_dir.name):
            raise ConfigError(
                f"{key}: {adapter.path} was trained on base {name!r}, not {base_dir.name!r}, and has no "
                f"{MANIFEST_NAME} with a base checksum to compare; train it on this base"
            )
        return
    if theirs != ours:
        raise ConfigError(
            f"{key}: {adapter.path} was trained on base weights sha256 {theirs}, but this run's base "
            f"{base_dir.name} has weights sha256 {ours}; an adapter only fits the base it was trained on"
        )
