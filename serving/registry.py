"""The registry contract on the serving side, and its read side (docs/registry.md); no torch.

The registry directory is the source of truth. A version is servable when its PEFT files
parse, its rank fits the engine, its tensors' header is sound and its manifest pins the
served base's weights (or the full-precision base a quantized base was made from).
trainer/registry_contract.py holds the same rules for the trainer (the two never import each
other); tests/test_registry_contract.py asserts both give the same verdicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from serving.errors import AdapterRejected, BadRequest, ConfigError, NotFound

# --- the contract (trainer/registry_contract.py holds the same) ---
ADAPTER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VERSION_RE = re.compile(r"^v[0-9]{1,6}$")
ADAPTER_MANIFEST = "loraplane-adapter.json"
BASE_MANIFEST = "loraplane-base.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_FILES = (PEFT_CONFIG, PEFT_WEIGHTS)
ADAPTER_FILES = (*PEFT_FILES, ADAPTER_MANIFEST)  # what a published version directory holds
# The trainer's rules plus what only the serving side reads: the manifest and the tensor file.
RULES = (
    "name",
    "version",
    "files",
    "peft_type",
    "modules_to_save",
    "dora",
    "rank",
    "base",
    "manifest",
    "tensors",
    "template",
)
MAX_HEADER_BYTES = 100 * 1024 * 1024


class Problem(NamedTuple):
    rule: str  # one of RULES
    message: str

    def __str__(self) -> str:
        return self.message


def name_problems(name: str, version: str) -> list[Problem]:
    problems = []
    if not ADAPTER_NAME_RE.match(name):
        problems.append(Problem("name", f"adapter name {name!r} must match {ADAPTER_NAME_RE.pattern}"))
    if not VERSION_RE.match(version):
        problems.append(Problem("version", f"adapter version {version!r} must look like v1, v2, ..."))
    return problems


def peft_problems(peft_config: dict[str, Any], max_lora_rank: int) -> list[Problem]:
    """Why vLLM would refuse to load this PEFT adapter config (empty list: it can)."""
    problems = []
    if peft_config.get("peft_type", "LORA") != "LORA":
        problems.append(Problem("peft_type", f"peft_type {peft_config.get('peft_type')!r} is not LORA"))
    if peft_config.get("modules_to_save"):
        problems.append(
            Problem(
                "modules_to_save",
                f"modules_to_save {peft_config['modules_to_save']} cannot be served by vLLM; retrain without it",
            )
        )
    if peft_config.get("use_dora"):
        problems.append(Problem("dora", "DoRA adapters cannot be served by vLLM"))
    rank = int(peft_config.get("r", 0))
    if not 0 < rank <= max_lora_rank:
        problems.append(
            Problem(
                "rank",
                f"rank {rank} is outside 1..{max_lora_rank} (engine.max_lora_rank); "
                "raise the limit or retrain with a smaller r",
            )
        )
    return problems


def adapter_base_matches(adapter_base_sha256: str, base_manifest: dict) -> bool:
    """The adapter's base is this base, or the full-precision base this one was quantized from."""
    accepted = {base_manifest.get("weights_sha256"), base_manifest.get("source_weights_sha256")}
    return adapter_base_sha256 in accepted - {None}


def base_problems(adapter_manifest: dict, base_manifest: dict) -> list[Problem]:
    adapter_sha = (adapter_manifest.get("base") or {}).get("weights_sha256", "")
    if adapter_base_matches(adapter_sha, base_manifest):
        return []
    source = base_manifest.get("source_weights_sha256")
    also = f" or its source base's {source}" if source else ""
    return [
        Problem(
            "base",
            f"trained on base weights_sha256 {adapter_sha or '<missing>'}, but base "
            f"{base_manifest.get('name', '?')!r} has weights_sha256 {base_manifest.get('weights_sha256')}{also}; "
            "retrain the adapter on this base (or its full-precision source) or serve the base it was trained on",
        )
    ]


def engine_template(path: str | None) -> tuple[str, str] | None:
    """(path, sha256 of its text) of engine.chat_template, as the trainer records a template; None: unset."""
    if path is None:
        return None
    try:
        return path, hashlib.sha256(Path(path).read_text().encode()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"engine.chat_template {path} cannot be read ({exc}); set it to the template file") from None


def template_problems(adapter_manifest: dict, engine_template: tuple[str, str] | None) -> list[Problem]:
    """An adapter trained with an explicit chat template (data.chat_template; its manifest's
    `chat_template`) is served only by engines applying that same text (engine.chat_template,
    given as (path, sha256)). One trained with the base's own template is served anywhere: a tool
    template renders plain chats as the base's does (docs/tools.md)."""
    trained = adapter_manifest.get("chat_template") or {}
    if trained.get("source", "tokenizer") == "tokenizer":
        return []
    path, sha = engine_template or ("the base's own template", None)
    if trained.get("sha256") == sha:
        return []
    return [
        Problem(
            "template",
            f"trained with chat template {trained.get('source')} (sha256 {trained.get('sha256')}), but the engines "
            f"apply {path} (sha256 {sha}); set engine.chat_template to the template it was trained with",
        )
    ]


def check_adapter_base(adapter_manifest: dict, base_manifest: dict) -> None:
    """Raise AdapterRejected naming both checksums when the adapter was trained on another base."""
    problems = base_problems(adapter_manifest, base_manifest)
    if problems:
        name = f"{adapter_manifest.get('name', '?')}@{adapter_manifest.get('version', '?')}"
        raise AdapterRejected(f"adapter {name} was {problems[0]}", code="adapter_base_mismatch")


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
        raise NotFound(f"base model {base!r}: no {BASE_MANIFEST} in {path}; {register_hint(base)}")
    manifest = json.loads(manifest_path.read_text())
    return BaseInfo(
        manifest.get("name", path.name),
        path,
        manifest["weights_sha256"],
        manifest.get("source_weights_sha256"),
        manifest,
    )


def register_hint(base: str) -> str:
    """What to run so that base `base` has a manifest (the serving side does not know the bundled list)."""
    return (
        f"register it with `loraplane base add PATH --name {base}` (PATH: the Hugging Face checkpoint), "
        f"or `loraplane base pull {base}` if it is a bundled base (`loraplane base list` shows what is there)"
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


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the registry directory held at one scan: adapter name -> its published versions, in
    version order. Read-only; the request path reads one of these and never lists a folder."""

    versions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # sorted
    # For the next scan: each name folder's mtime (ns) when it was listed, the names whose mtime had
    # moved since the scan before, and when this scan began.
    mtimes: Mapping[str, int] = field(default_factory=dict, repr=False)
    changed: frozenset[str] = field(default_factory=frozenset, repr=False)
    scanned_at_ns: int = 0
    listed_all_at_ns: int = 0  # the last scan that listed every folder

    def resolve(self, name: str, version: str | None) -> AdapterRef:
        """`name@version`, or `name`'s newest version when `version` is None; NotFound naming
        the published versions otherwise."""
        versions = self.versions.get(name)
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


# File times tick coarsely (a kernel clock tick), so a publish in the same tick as a listing can leave
# the folder's mtime equal (git's "racily clean" entries). So a folder is listed again, whatever its
# mtime, when its mtime moved at the previous scan or lies within RACY_NS of that scan's start.
RACY_NS = 2_000_000_000
# Whatever the mtimes say, every folder is listed again at least this often: a writer on a shared
# volume whose clock lags and whose file times are coarse (1 s on some NFS servers) can still leave
# an mtime that both rules above trust; this bounds that miss to FULL_RESCAN_NS.
FULL_RESCAN_NS = 30_000_000_000


def scan(adapters_dir: Path, previous: RegistrySnapshot | None = None) -> RegistrySnapshot:
    """List the registry directory: every adapter name with at least one version directory (a
    publish in progress, `.tmp-*`, does not match VERSION_RE and stays invisible). With `previous`,
    a name folder whose mtime has not changed since it was listed keeps its versions (a publish or
    removal renames inside that folder, which moves its mtime): one stat per name instead of one
    listing, what keeps the gateway's 1 s poll cheap with thousands of adapters."""
    began = time.time_ns()
    found: dict[str, tuple[str, ...]] = {}
    mtimes: dict[str, int] = {}
    changed: set[str] = set()
    try:
        roots = [e for e in os.scandir(adapters_dir) if e.is_dir() and ADAPTER_NAME_RE.match(e.name)]
    except FileNotFoundError:
        return RegistrySnapshot()
    prev = previous or RegistrySnapshot()
    full = began - prev.listed_all_at_ns >= FULL_RESCAN_NS  # list every folder this time
    for root in roots:
        name = root.name
        try:
            mtime = root.stat().st_mtime_ns
            if prev.mtimes.get(name) != mtime:
                changed.add(name)
            elif not full and name not in prev.changed and mtime < prev.scanned_at_ns - RACY_NS:
                mtimes[name] = mtime  # settled: the versions listed before still hold
                if name in prev.versions:
                    found[name] = prev.versions[name]
                continue
            versions = [e.name for e in os.scandir(root.path) if e.is_dir() and VERSION_RE.match(e.name)]
        except (FileNotFoundError, NotADirectoryError):  # removed between the two listings
            continue
        mtimes[name] = mtime
        if versions:
            found[name] = tuple(sorted(versions, key=version_number))
    return RegistrySnapshot(
        MappingProxyType(found),
        tuple(sorted(found)),
        MappingProxyType(mtimes),
        frozenset(changed),
        began,
        began if full else prev.listed_all_at_ns,
    )


class AdapterRegistry:
    """The registry directory as a process sees it: `names`, `versions` and `resolve` read the
    snapshot of the last `refresh()` (the first read scans); only `refresh()` lists folders. A
    long-lived reader (the gateway) calls `refresh()` from its background poll, so a version
    published since is served within one poll interval."""

    # Misses on the request path rescan at most this often (whatever the poll does): a version
    # published a moment ago is served on its first request, while a flood of unknown names costs
    # one scan per interval.
    MISS_RESCAN_S = 1.0

    def __init__(
        self, adapters_dir: Path, base: BaseInfo, max_lora_rank: int, engine_template: tuple[str, str] | None = None
    ):
        self.adapters_dir = adapters_dir
        self.base = base
        self.max_lora_rank = max_lora_rank
        self.engine_template = engine_template  # (path, sha256) of engine.chat_template; None: the base's own
        self._snapshot: RegistrySnapshot | None = None
        self._miss_scanned_at = float("-inf")

    @property
    def snapshot(self) -> RegistrySnapshot:
        return self._snapshot if self._snapshot is not None else self.refresh()

    def refresh(self) -> RegistrySnapshot:
        """Scan the directory and install the result (one attribute swap: readers in other
        threads see the old snapshot or the new one, never half of one)."""
        self._snapshot = scan(self.adapters_dir, self._snapshot)
        return self._snapshot

    def versions(self, name: str) -> list[str]:
        return list(self.snapshot.versions.get(name, ()))

    def names(self) -> list[str]:
        return list(self.snapshot.names)

    def has(self, name: str) -> bool:
        return name in self.snapshot.versions

    def resolve(self, name: str, version: str | None) -> AdapterRef:
        """From the snapshot; on a miss, one rescan unless a miss rescanned in the last MISS_RESCAN_S."""
        try:
            return self.snapshot.resolve(name, version)
        except NotFound:
            now = time.monotonic()
            if now - self._miss_scanned_at < self.MISS_RESCAN_S:
                raise
            self._miss_scanned_at = now
            return self.refresh().resolve(name, version)

    def resolve_fresh(self, name: str, version: str | None) -> AdapterRef:
        """resolve(), scanning the directory once more on a miss: for admin actions that name a
        version published a moment ago (before the next poll). Never on the request path."""
        try:
            return self.resolve(name, version)
        except NotFound:
            return self.refresh().resolve(name, version)

    def path(self, ref: AdapterRef) -> Path:
        return self.adapters_dir / ref.name / ref.version

    def manifest(self, ref: AdapterRef, directory: Path | None = None) -> dict:
        path = (directory or self.path(ref)) / ADAPTER_MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AdapterRejected(f"adapter {ref.key}: cannot read {ADAPTER_MANIFEST}: {exc}") from None

    def problems(self, ref: AdapterRef, path: Path | None = None) -> list[Problem]:
        """Every reason `ref` (or the directory `path`, e.g. before publishing) cannot be served here."""
        path = path or self.path(ref)
        problems = name_problems(ref.name, ref.version)
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            return [*problems, Problem("files", f"{path} lacks {', '.join(missing)}")]
        try:
            manifest = json.loads((path / ADAPTER_MANIFEST).read_text())
            peft_config = json.loads((path / PEFT_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            return [*problems, Problem("manifest", f"cannot read {ADAPTER_MANIFEST} or {PEFT_CONFIG}: {exc}")]
        problems += base_problems(manifest, self.base_manifest())
        problems += template_problems(manifest, self.engine_template)
        problems += peft_problems(peft_config, self.max_lora_rank)
        try:
            header = safetensors_header(path / PEFT_WEIGHTS)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [*problems, Problem("tensors", f"{PEFT_WEIGHTS} is broken: {exc}")]
        if not any(key.endswith("lora_A.weight") for key in header):
            problems.append(Problem("tensors", f"{PEFT_WEIGHTS} holds no lora_A weights"))
        return problems

    def validate(self, ref: AdapterRef, path: Path | None = None) -> dict:
        """Raise AdapterRejected naming the reasons when a version cannot be served; else its manifest."""
        problems = self.problems(ref, path)
        if problems:
            code = "adapter_base_mismatch" if any(p.rule == "base" for p in problems) else None
            raise AdapterRejected(f"adapter {ref.key}: " + "; ".join(map(str, problems)), code=code)
        return self.manifest(ref, path)

    def base_manifest(self) -> dict:
        return {
            "name": self.base.name,
            "weights_sha256": self.base.weights_sha256,
            "source_weights_sha256": self.base.source_weights_sha256,
        }


def check_model_field(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("`model` is required and must be a non-empty string", param="model")
    if re.search(r"[/\\]|\.\.", value):
        raise NotFound(
            f"model {value!r} does not exist: model ids never contain paths", param="model", code="model_not_found"
        )
    return value
