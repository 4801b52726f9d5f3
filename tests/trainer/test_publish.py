"""Publishing into the registry: servability checks, atomic layout, immutability (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.errors import PublishError
from trainer.publish import MANIFEST_NAME, build_manifest, publish_adapter, servability_problems


def fake_adapter(tmp_path: Path, **config) -> Path:
    src = tmp_path / "adapter"
    src.mkdir()
    body = {"peft_type": "LORA", "r": 8, "use_dora": False, "modules_to_save": None, **config}
    (src / "adapter_config.json").write_text(json.dumps(body))
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    return src


def manifest() -> dict:
    return build_manifest(
        name="demo-json",
        version="v1",
        base={"name": "b", "weights_sha256": "0" * 64},
        lora={"r": 8, "alpha": 16, "target_modules": ["q_proj"], "rslora": False},
        dataset={"train": "t.jsonl", "sha256": "1" * 64},
        config={"lora": {"r": 8}},
        eval_result={"metric": "exact_match", "value": 0.9, "n": 10, "eval_loss": 0.1},
    )


def test_publish_writes_the_registry_layout(tmp_path):
    target = publish_adapter(fake_adapter(tmp_path), tmp_path / "adapters", "demo-json", "v1", manifest(), 16)
    assert target == tmp_path / "adapters" / "demo-json" / "v1"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME]
    )
    written = json.loads((target / MANIFEST_NAME).read_text())
    assert written["format"] == 1 and written["name"] == "demo-json" and written["version"] == "v1"
    assert written["created_at"].endswith("Z") and written["eval"]["value"] == 0.9
    assert [p.name for p in (tmp_path / "adapters" / "demo-json").iterdir()] == ["v1"]  # no temp left


def test_existing_version_is_refused(tmp_path):
    src = fake_adapter(tmp_path)
    publish_adapter(src, tmp_path / "adapters", "demo-json", "v1", manifest(), 16)
    with pytest.raises(PublishError, match="already exists.*new --publish.version"):
        publish_adapter(src, tmp_path / "adapters", "demo-json", "v1", manifest(), 16)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
        ({"r": 32}, "rank 32 is outside 1..16"),
    ],
)
def test_unservable_adapters_are_refused_with_the_reason(tmp_path, config, reason):
    with pytest.raises(PublishError, match=reason):
        publish_adapter(fake_adapter(tmp_path, **config), tmp_path / "adapters", "demo-json", "v1", manifest(), 16)
    assert not (tmp_path / "adapters" / "demo-json" / "v1").exists()


def test_servable_adapter_has_no_problems():
    assert servability_problems({"peft_type": "LORA", "r": 16, "use_dora": False, "modules_to_save": None}, 16) == []
