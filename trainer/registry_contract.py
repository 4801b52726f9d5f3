"""The registry contract as the trainer holds it (docs/registry.md): names, file names, servability.

serving/registry.py holds the same contract for the serving side (the two never import each
other); tests/test_registry_contract.py feeds both the same adapter directories and asserts the
same verdicts. Change a rule here and there together, with docs/registry.md.

A verdict is a list of `Problem`s (empty: vLLM can serve it). `Problem.rule` is one of RULES.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

ADAPTER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ADAPTER_VERSION_RE = re.compile(r"^v[0-9]{1,6}$")
ADAPTER_MANIFEST = "loraplane-adapter.json"
BASE_MANIFEST = "loraplane-base.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_FILES = (PEFT_CONFIG, PEFT_WEIGHTS)
ADAPTER_FILES = (*PEFT_FILES, ADAPTER_MANIFEST)  # what a published version directory holds
RULES = ("name", "version", "files", "peft_type", "modules_to_save", "dora", "rank", "base")


class Problem(NamedTuple):
    rule: str  # one of RULES
    message: str

    def __str__(self) -> str:
        return self.message


def name_problems(name: str, version: str) -> list[Problem]:
    problems = []
    if not ADAPTER_NAME_RE.match(name):
        problems.append(Problem("name", f"adapter name {name!r} must match {ADAPTER_NAME_RE.pattern}"))
    if not ADAPTER_VERSION_RE.match(version):
        problems.append(Problem("version", f"adapter version {version!r} must look like v1, v2, ..."))
    return problems


def servability_problems(adapter_config: dict[str, Any], max_lora_rank: int) -> list[Problem]:
    """Why vLLM would refuse this PEFT adapter config (empty list: it can serve it)."""
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(
            Problem("peft_type", f"peft_type {adapter_config['peft_type']} (only LORA adapters are served)")
        )
    if adapter_config.get("modules_to_save"):
        problems.append(
            Problem(
                "modules_to_save",
                f"modules_to_save={adapter_config['modules_to_save']} (vLLM loads only LoRA matrices; "
                "set lora.modules_to_save to [])",
            )
        )
    if adapter_config.get("use_dora"):
        problems.append(Problem("dora", "DoRA (vLLM cannot serve DoRA adapters; set lora.use_dora false)"))
    rank = int(adapter_config.get("r", 0))
    if not 0 < rank <= max_lora_rank:
        problems.append(
            Problem(
                "rank",
                f"rank {rank} is outside 1..{max_lora_rank} (max_lora_rank {max_lora_rank}, the engine's "
                "--max-lora-rank; lower lora.r or raise publish.max_lora_rank together with the server's limit)",
            )
        )
    return problems


def base_matches(adapter_base_sha256: str, base_manifest: dict[str, Any]) -> bool:
    """The adapter's base is this base, or the full-precision base this one was quantized from."""
    accepted = {base_manifest.get("weights_sha256"), base_manifest.get("source_weights_sha256")}
    return adapter_base_sha256 in accepted - {None}


def base_problems(adapter_manifest: dict[str, Any], base_manifest: dict[str, Any]) -> list[Problem]:
    adapter_sha = (adapter_manifest.get("base") or {}).get("weights_sha256", "")
    if base_matches(adapter_sha, base_manifest):
        return []
    return [
        Problem(
            "base",
            f"trained on base weights_sha256 {adapter_sha or '<missing>'}, but base "
            f"{base_manifest.get('name', '?')!r} has weights_sha256 {base_manifest.get('weights_sha256')}",
        )
    ]


def adapter_dir_problems(
    adapter_dir: Path,
    name: str,
    version: str,
    max_lora_rank: int,
    manifest: dict[str, Any] | None = None,
    base_manifest: dict[str, Any] | None = None,
) -> list[Problem]:
    """The trainer's whole verdict on publishing `adapter_dir` as name@version.

    `manifest` is the adapter manifest to publish (default: the directory's own); the base rule is
    checked when `base_manifest` (the base's loraplane-base.json) is given.
    """
    problems = name_problems(name, version)
    missing = [f for f in PEFT_FILES if not (adapter_dir / f).is_file()]
    if missing:
        return [*problems, Problem("files", f"{adapter_dir} lacks {', '.join(missing)}; is it a saved PEFT adapter?")]
    problems += servability_problems(json.loads((adapter_dir / PEFT_CONFIG).read_text()), max_lora_rank)
    if base_manifest is not None:
        if manifest is None and (adapter_dir / ADAPTER_MANIFEST).is_file():
            manifest = json.loads((adapter_dir / ADAPTER_MANIFEST).read_text())
        problems += base_problems(manifest or {}, base_manifest)
    return problems
