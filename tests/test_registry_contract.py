"""The registry contract (docs/registry.md) is held once by the trainer and once by serving.

Both sides get the same adapter directories and must give the same verdicts (rule by rule), use
the same file names and patterns, and accept each other's output. Change a rule on one side
only and this fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import serving.registry as serving_side
import trainer.registry_contract as trainer_side
from serving.publish import write_version
from trainer.publish import publish_adapter

REPO = Path(__file__).resolve().parents[1]
BASE_SHA, OTHER_SHA = "a" * 64, "c" * 64
BASE_MANIFEST = {"name": "tiny-base", "weights_sha256": BASE_SHA}
MAX_RANK = 16

# case -> (adapter name, version, adapter_config overrides, manifest base sha, expected rules)
CASES = {
    "good": ("bot", "v1", {}, BASE_SHA, set()),
    "rank too high": ("bot", "v1", {"r": 32}, BASE_SHA, {"rank"}),
    "rank zero": ("bot", "v1", {"r": 0}, BASE_SHA, {"rank"}),
    "DoRA": ("bot", "v1", {"use_dora": True}, BASE_SHA, {"dora"}),
    "modules_to_save": ("bot", "v1", {"modules_to_save": ["lm_head"]}, BASE_SHA, {"modules_to_save"}),
    "not LoRA": ("bot", "v1", {"peft_type": "IA3"}, BASE_SHA, {"peft_type"}),
    "wrong base": ("bot", "v1", {}, OTHER_SHA, {"base"}),
    "bad name": ("Bad Name", "v1", {}, BASE_SHA, {"name"}),
    "bad version": ("bot", "latest", {}, BASE_SHA, {"version"}),
    "several at once": ("bot", "v1", {"use_dora": True, "r": 64}, OTHER_SHA, {"dora", "rank", "base"}),
}


def make_adapter_dir(root: Path, name: str, version: str, peft: dict, base_sha: str) -> Path:
    """A PEFT adapter directory with its manifest, as `trainer` publishes it (shapes r x 8, 8 x r)."""
    path = root / "src"
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **peft}
    (path / trainer_side.PEFT_CONFIG).write_text(json.dumps(config))
    r = max(int(config["r"]), 1)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": np.ones((r, 8), np.float32), f"{prefix}.lora_B.weight": np.ones((8, r))}
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path / trainer_side.PEFT_WEIGHTS))
    manifest = {"format": 1, "name": name, "version": version, "base": {"weights_sha256": base_sha}}
    (path / trainer_side.ADAPTER_MANIFEST).write_text(json.dumps(manifest))
    return path


def serving_registry(root: Path) -> serving_side.AdapterRegistry:
    base = serving_side.BaseInfo(BASE_MANIFEST["name"], root, BASE_SHA)
    return serving_side.AdapterRegistry(root / "adapters", base, MAX_RANK)


@pytest.mark.parametrize("case", list(CASES))
def test_both_sides_give_the_same_verdict(tmp_path: Path, case: str) -> None:
    name, version, peft, base_sha, expected = CASES[case]
    src = make_adapter_dir(tmp_path, name, version, peft, base_sha)
    trainer_verdict = trainer_side.adapter_dir_problems(src, name, version, MAX_RANK, base_manifest=BASE_MANIFEST)
    ref = serving_side.AdapterRef(name, version)
    serving_verdict = serving_registry(tmp_path).problems(ref, path=src)
    assert {p.rule for p in trainer_verdict} == expected
    assert {p.rule for p in serving_verdict} == expected
    for problem in (*trainer_verdict, *serving_verdict):  # each reason says what was wrong
        assert problem.message and problem.rule in serving_side.RULES


def test_same_patterns_and_file_names_and_docs_state_them() -> None:
    assert trainer_side.ADAPTER_NAME_RE.pattern == serving_side.ADAPTER_NAME_RE.pattern
    assert trainer_side.ADAPTER_VERSION_RE.pattern == serving_side.VERSION_RE.pattern
    for attr in ("ADAPTER_MANIFEST", "BASE_MANIFEST", "PEFT_CONFIG", "PEFT_WEIGHTS", "ADAPTER_FILES"):
        assert getattr(trainer_side, attr) == getattr(serving_side, attr), attr
    assert set(trainer_side.RULES) <= set(serving_side.RULES)
    docs = (REPO / "docs" / "registry.md").read_text()
    for fact in (
        trainer_side.ADAPTER_NAME_RE.pattern,
        trainer_side.ADAPTER_VERSION_RE.pattern,
        *trainer_side.ADAPTER_FILES,
        trainer_side.BASE_MANIFEST,
    ):
        assert f"`{fact}`" in docs, f"docs/registry.md does not state {fact}"


@pytest.mark.parametrize(
    ("name", "ok"), [("demo-json", True), ("a", True), ("x" * 63, True), ("x" * 64, False), ("-a", False)]
)
def test_name_pattern_edges_agree(name: str, ok: bool) -> None:
    assert (trainer_side.name_problems(name, "v1") == []) is ok
    assert (serving_side.name_problems(name, "v1") == []) is ok


def test_each_side_reads_what_the_other_writes(tmp_path: Path) -> None:
    src = make_adapter_dir(tmp_path, "bot", "v1", {}, BASE_SHA)
    manifest = json.loads((src / trainer_side.ADAPTER_MANIFEST).read_text())
    by_trainer = publish_adapter(src, tmp_path / "adapters", "bot", "v1", manifest, MAX_RANK, BASE_MANIFEST)
    files = {f: src / f for f in serving_side.PEFT_FILES}
    by_serving = write_version(tmp_path / "adapters" / "bot", "v2", files, {**manifest, "version": "v2"})
    assert sorted(p.name for p in by_trainer.iterdir()) == sorted(p.name for p in by_serving.iterdir())
    assert sorted(p.name for p in by_trainer.iterdir()) == sorted(trainer_side.ADAPTER_FILES)
    registry = serving_registry(tmp_path)
    assert registry.versions("bot") == ["v1", "v2"]
    for version in ("v1", "v2"):
        registry.validate(serving_side.AdapterRef("bot", version))
        assert trainer_side.adapter_dir_problems(by_trainer.parent / version, "bot", version, MAX_RANK) == []
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        json.loads((by_trainer / "loraplane-adapter.json").read_text())["created_at"],
    )
