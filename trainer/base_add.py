"""`loraplane base add PATH [--name NAME] [--link]`: register a local Hugging Face checkpoint as a base.

The checkpoint is checked before anything lands in models/: config.json names an architecture
vLLM serves (trainer/vllm_archs.py), the tokenizer loads, the weights are safetensors whose
headers parse and whose index (if sharded) names only files that exist. Then models/NAME/ is built
in a temporary directory beside it (a copy, or with --link symlinks to the files in PATH so a
14 GB checkpoint is not copied), the manifest (loraplane-base.json, with the weights_sha256 that
adapters pin) is written, everything is fsynced, and the directory is renamed into place: a
failure at any point leaves nothing half-written in models/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path

from trainer.errors import BaseModelError
from trainer.publish import _fsync_dir  # opens read-only and fsyncs: files and directories alike
from trainer.registry_contract import BASE_MANIFEST
from trainer.vllm_archs import VLLM_TEXT_ARCHITECTURES, VLLM_VERSION

BASE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20


def default_name(src: Path) -> str:
    """models/NAME for a checkpoint directory: its folder name, lower-cased."""
    return src.resolve().name.lower()


def check_name(name: str, models_dir: Path) -> None:
    if not BASE_NAME_RE.match(name):
        raise BaseModelError(
            f"base name {name!r} must match {BASE_NAME_RE.pattern} (lower case, digits, '.', '_', '-'); "
            "pass another with --name"
        )
    target = models_dir / name
    if target.exists() or target.is_symlink():
        raise BaseModelError(
            f"base {name!r} is already registered at {target}; pick another --name, "
            f"or remove {target} first to register it again"
        )


def check_config(src: Path) -> dict:
    """config.json of `src`, whose architecture vLLM serves as a text-generation model."""
    path = src / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{path} is missing; pass a Hugging Face model directory (config.json, *.safetensors)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BaseModelError(f"{path} is not valid JSON ({exc}); re-save the model with save_pretrained") from exc
    archs = config.get("architectures") or []
    if not archs:
        raise BaseModelError(f'{path} names no architectures; set e.g. "architectures": ["LlamaForCausalLM"]')
    unserved = [a for a in archs if a not in VLLM_TEXT_ARCHITECTURES]
    if unserved:
        examples = ", ".join(a for a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"))
        raise BaseModelError(
            f"{path} names architecture {unserved[0]!r}, which vLLM {VLLM_VERSION} does not serve as a "
            f"text-generation model (e.g. {examples}; the full list is trainer/vllm_archs.py); "
            "use a causal LM checkpoint vLLM supports"
        )
    return config


def safetensors_files(src: Path) -> list[Path]:
    """The weight files, each with a parsable header; a sharded index must name only present files."""
    files = sorted(src.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in src.glob("*.bin"))
        fix = (
            f" (found {', '.join(bins[:3])}: re-save with save_pretrained(dir, safe_serialization=True))"
            if bins
            else ""
        )
        raise BaseModelError(f"{src} has no *.safetensors weights{fix}; a base must be a safetensors checkpoint")
    for path in files:
        _check_safetensors_header(path)
    index = src / SAFETENSORS_INDEX
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (src / s).is_file())
        if missing:
            raise BaseModelError(f"{index} names shards that are missing: {', '.join(missing[:3])}; copy them in")
    return files


def _check_safetensors_header(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        ok = 0 < length <= min(size - 8, MAX_HEADER_BYTES)
        try:
            header = json.loads(fh.read(length)) if ok else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise BaseModelError(f"{path} is not a readable safetensors file (truncated or corrupt); copy it again")


def check_tokenizer(src: Path) -> bool:
    """Load the tokenizer as the trainer and vLLM will; True when it has a chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as exc:  # transformers raises many kinds; all mean "this tokenizer does not load"
        files = sorted(p.name for p in src.glob("*token*")) or ["no tokenizer files"]
        raise BaseModelError(
            f"the tokenizer in {src} does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}; "
            f"files: {', '.join(files)}); copy the model's tokenizer files (tokenizer.json, "
            "tokenizer_config.json, ...) next to config.json"
        ) from exc
    return bool(getattr(tokenizer, "chat_template", None))


def _populate(src: Path, tmp: Path, link: bool) -> None:
    """Copy (or symlink) every top-level entry of `src` into `tmp`, but never a manifest of its own."""
    for entry in sorted(src.iterdir()):
        if entry.name == BASE_MANIFEST or entry.name.startswith("."):
            continue
        dest = tmp / entry.name
        if link:
            dest.symlink_to(entry.resolve())
        elif entry.is_dir():
            shutil.copytree(entry, dest)
        else:
            shutil.copy2(entry, dest)
            dest.chmod(0o644)  # save_pretrained writes 0600 weights; the serving user must read them


def _fsync_copies(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync_dir(path)
    _fsync_dir(root)


def add(src: Path, models_dir: Path, name: str | None = None, link: bool = False) -> Path:
    """Check `src` and register it as models/NAME, atomically. Returns models/NAME."""
    from trainer.base_models import weights_sha256

    src = src.expanduser()
    if not src.is_dir():
        raise BaseModelError(f"{src} is not a directory; pass a local Hugging Face model directory")
    name = name or default_name(src)
    check_name(name, models_dir)
    config = check_config(src)
    safetensors_files(src)
    has_chat_template = check_tokenizer(src)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=models_dir))
    try:
        started = time.monotonic()
        _populate(src, tmp, link)
        manifest = {
            "format": 1,
            "name": name,
            "source": str(src.resolve()),
            "linked": link,
            "architecture": config["architectures"][0],
            "dtype": str(config.get("torch_dtype") or config.get("dtype") or "unknown"),
            "chat_template": has_chat_template,
            "checked_against_vllm": VLLM_VERSION,
            "weights_sha256": weights_sha256(tmp),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / BASE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_copies(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        target = models_dir / name
        if target.exists():  # registered by someone else meanwhile
            raise BaseModelError(f"base {name!r} appeared at {target} while adding; nothing was changed")
        os.replace(tmp, target)
        _fsync_dir(models_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    how = "linked to" if link else "copied from"
    print(f"{name}: registered at {target} ({how} {src}) in {time.monotonic() - started:.0f} s, "
          f"{manifest['architecture']}, sha256 {manifest['weights_sha256'][:12]}")  # fmt: skip
    if not has_chat_template:
        print(f"{name}: note: the tokenizer has no chat template; /v1/chat/completions needs one "
              "(serve with a --chat-template or use /v1/completions)")  # fmt: skip
    return target
