"""Read side of the registry (docs/registry.md): resolve and validate adapters, without torch.

The registry directory is the source of truth. A version is servable when its PEFT files
parse, its rank fits the engine, its tensors' header is sound and its manifest pins the
served base's weights (or the full-precision base a quantized base was made from).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from serving.capabilities import check_adapter_base
from serving.config import ADAPTER_NAME_RE, VERSION_RE
from serving.errors import AdapterRejected, BadRequest, NotFound

ADAPTER_MANIFEST = "loraplane-adapter.json"
BASE_MANIFEST = "loraplane-base.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class AdapterRef:
    name: str
    version: str

    @property
    def key(self) -> str:  # also the engine's lora_name
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class BaseInfo:
    name: str
    path: Path
    weights_sha256: str
    source_weights_sha256: str | None = None  # set for quantized bases
    manifest: dict = field(default_factory=dict, compare=False)


def version_number(version: str) -> int:
    return int(version[1:])


def parse_model_name(model: str) -> tuple[str, str | None]:
    """'name' or 'name@vN' -> (name, version or None). Rejects anything path-like."""
    name, sep, version = model.partition("@")
    if not ADAPTER_NAME_RE.match(name) or (sep and not VERSION_RE.match(version)):
        raise NotFound(
            f"model {model!r} does not exist: use a served model id from /v1/models ('<adapter>' or '<adapter>@vN')",
            param="model",
            code="model_not_found",
        )
    return name, (version if sep else None)


def read_base(models_dir: Path, base: str) -> BaseInfo:
    path = models_dir / base if (models_dir / base).is_dir() else Path(base)
    manifest_path = path / BASE_MANIFEST
    if not manifest_path.is_file():
        raise NotFound(f"base model {base!r}: no {BASE_MANIFEST} in {path}; run `loraplane base pull {base}`")
    manifest = json.loads(manifest_path.read_text())
    return BaseInfo(
        manifest.get("name", path.name),
        path,
        manifest["weights_sha256"],
        manifest.get("source_weights_sha256"),
        manifest,
    )


def safetensors_header(path: Path) -> dict:
    """Parse a .safetensors header (8-byte little-endian length + JSON) and check offsets."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError("file shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} exceeds the file size {size}")
        header = json.loads(fh.read(length))
    data_size = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"tensor {name} spans bytes {begin}..{end}, beyond the {data_size} data bytes")
    return header


class AdapterRegistry:
    def __init__(self, adapters_dir: Path, base: BaseInfo, max_lora_rank: int):
        self.adapters_dir = adapters_dir
        self.base = base
        self.max_lora_rank = max_lora_rank

    def versions(self, name: str) -> list[str]:
        root = self.adapters_dir / name
        if not root.is_dir():
            return []
        found = [p.name for p in root.iterdir() if p.is_dir() and VERSION_RE.match(p.name)]
        return sorted(found, key=version_number)

    def names(self) -> list[str]:
        if not self.adapters_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.adapters_dir.iterdir()
            if p.is_dir() and ADAPTER_NAME_RE.match(p.name) and self.versions(p.name)
        )

    def resolve(self, name: str, version: str | None) -> AdapterRef:
        versions = self.versions(name)
        if not versions:
            raise NotFound(
                f"model {name!r} does not exist: no base, adapter or experiment by that name",
                param="model",
                code="model_not_found",
            )
        if version is None:
            return AdapterRef(name, versions[-1])
        if version not in versions:
            raise NotFound(
                f"adapter {name!r} has no version {version!r}; published versions: {', '.join(versions)}",
                param="model",
                code="model_not_found",
            )
        return AdapterRef(name, version)

    def path(self, ref: AdapterRef) -> Path:
        return self.adapters_dir / ref.name / ref.version

    def manifest(self, ref: AdapterRef, directory: Path | None = None) -> dict:
        path = (directory or self.path(ref)) / ADAPTER_MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AdapterRejected(f"adapter {ref.key}: cannot read {ADAPTER_MANIFEST}: {exc}") from None

    def validate(self, ref: AdapterRef, path: Path | None = None) -> dict:
        """Raise AdapterRejected naming the reason when a version cannot be served; else its manifest.

        `path` validates a directory that is not (yet) at its registry place, e.g. before publishing.
        """
        path = path or self.path(ref)
        manifest = self.manifest(ref, path)
        self._check_base(ref, manifest)
        try:
            peft_config = json.loads((path / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdapterRejected(f"adapter {ref.key}: adapter_config.json unreadable: {exc}") from None
        self._check_peft(ref, peft_config)
        try:
            header = safetensors_header(path / "adapter_model.safetensors")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterRejected(f"adapter {ref.key}: adapter_model.safetensors is broken: {exc}") from None
        if not any(key.endswith("lora_A.weight") for key in header):
            raise AdapterRejected(f"adapter {ref.key}: adapter_model.safetensors holds no lora_A weights")
        return manifest

    def _check_base(self, ref: AdapterRef, manifest: dict) -> None:
        base_manifest = {
            "name": self.base.name,
            "weights_sha256": self.base.weights_sha256,
            "source_weights_sha256": self.base.source_weights_sha256,
        }
        check_adapter_base({**manifest, "name": ref.name, "version": ref.version}, base_manifest)

    def _check_peft(self, ref: AdapterRef, peft_config: dict) -> None:
        if peft_config.get("peft_type", "LORA") != "LORA":
            raise AdapterRejected(f"adapter {ref.key}: peft_type {peft_config.get('peft_type')!r} is not LORA")
        if peft_config.get("modules_to_save"):
            raise AdapterRejected(
                f"adapter {ref.key}: modules_to_save {peft_config['modules_to_save']} "
                "cannot be served by vLLM; retrain without it"
            )
        if peft_config.get("use_dora"):
            raise AdapterRejected(f"adapter {ref.key}: DoRA adapters cannot be served by vLLM")
        rank = int(peft_config.get("r", 0))
        if not 0 < rank <= self.max_lora_rank:
            raise AdapterRejected(
                f"adapter {ref.key}: rank {rank} is outside 1..{self.max_lora_rank} "
                "(engine.max_lora_rank); raise the limit or retrain with a smaller r"
            )


def check_model_field(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("`model` is required and must be a non-empty string", param="model")
    if re.search(r"[/\\]|\.\.", value):
        raise NotFound(
            f"model {value!r} does not exist: model ids never contain paths", param="model", code="model_not_found"
        )
    return value
