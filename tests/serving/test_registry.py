"""Registry read side: resolution, name validation and refusal of unservable adapters."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from serving.errors import AdapterRejected, NotFound
from serving.registry import AdapterRef, AdapterRegistry, BaseInfo, parse_model_name, safetensors_header

BASE = BaseInfo("tiny-base", Path("."), "a" * 64, source_weights_sha256="b" * 64)


def make_adapter(root: Path, name: str, version: str, *, r: int = 8, base_sha: str = "a" * 64, **peft) -> Path:
    path = root / name / version
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"], **peft}
    (path / "adapter_config.json").write_text(json.dumps(config))
    tensors = {
        "base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((r, 4), np.float32),
        "base_model.model.layers.0.q_proj.lora_B.weight": np.zeros((4, r), np.float32),
    }
    save_file(tensors, str(path / "adapter_model.safetensors"))
    manifest = {"format": 1, "name": name, "version": version, "base": {"weights_sha256": base_sha}}
    (path / "loraplane-adapter.json").write_text(json.dumps(manifest))
    return path


def registry(root: Path) -> AdapterRegistry:
    return AdapterRegistry(root, BASE, max_lora_rank=16)


def test_resolves_latest_by_number_not_text(tmp_path: Path) -> None:
    for version in ("v2", "v10", "v9"):
        make_adapter(tmp_path, "bot", version)
    (tmp_path / "bot" / ".tmp-v11-x").mkdir()  # a publish in progress is invisible
    reg = registry(tmp_path)
    assert reg.versions("bot") == ["v2", "v9", "v10"]
    assert reg.resolve("bot", None) == AdapterRef("bot", "v10")
    with pytest.raises(NotFound, match="v3.*v2, v9, v10"):
        reg.resolve("bot", "v3")


@pytest.mark.parametrize("model", ["../etc", "a/b", "bot@latest", "Bot", "bot@v1@v2", "/abs"])
def test_path_like_or_malformed_names_are_404(model: str) -> None:
    with pytest.raises(NotFound):
        parse_model_name(model)


def test_valid_adapter_passes(tmp_path: Path) -> None:
    make_adapter(tmp_path, "bot", "v1")
    assert registry(tmp_path).validate(AdapterRef("bot", "v1"))["version"] == "v1"


def test_adapter_for_the_quantized_source_base_is_accepted(tmp_path: Path) -> None:
    make_adapter(tmp_path, "bot", "v1", base_sha="b" * 64)
    registry(tmp_path).validate(AdapterRef("bot", "v1"))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"r": 32}, "rank 32 is outside 1..16"),
        ({"base_sha": "c" * 64}, "trained on base weights_sha256 cccccccccccc"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"use_dora": True}, "DoRA"),
    ],
)
def test_unservable_adapters_rejected_with_reason(tmp_path: Path, kwargs: dict, reason: str) -> None:
    make_adapter(tmp_path, "bot", "v1", **kwargs)
    with pytest.raises(AdapterRejected, match=reason):
        registry(tmp_path).validate(AdapterRef("bot", "v1"))


def test_truncated_safetensors_rejected(tmp_path: Path) -> None:
    path = make_adapter(tmp_path, "bot", "v1")
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(AdapterRejected, match="broken"):
        registry(tmp_path).validate(AdapterRef("bot", "v1"))


def test_garbage_safetensors_rejected(tmp_path: Path) -> None:
    path = make_adapter(tmp_path, "bot", "v1")
    (path / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError):
        safetensors_header(path / "adapter_model.safetensors")
    with pytest.raises(AdapterRejected):
        registry(tmp_path).validate(AdapterRef("bot", "v1"))


def test_reads_stay_on_the_snapshot_until_refresh(tmp_path: Path) -> None:
    make_adapter(tmp_path, "bot", "v1")
    reg = registry(tmp_path)
    assert reg.versions("bot") == ["v1"]  # the first read scans
    make_adapter(tmp_path, "bot", "v2")
    make_adapter(tmp_path, "new", "v1")
    assert reg.versions("bot") == ["v1"] and not reg.has("new")  # no folder listed since
    with pytest.raises(NotFound, match="published versions: v1"):
        reg.snapshot.resolve("bot", "v2")
    reg.refresh()
    assert reg.versions("bot") == ["v1", "v2"] and reg.names() == ["bot", "new"]
    assert reg.resolve("new", None) == AdapterRef("new", "v1")


def test_admin_resolution_sees_a_version_published_since_the_last_poll(tmp_path: Path) -> None:
    """`rollout start --candidate bot@v2` right after `adapters publish` (the demo's broken candidate
    did this): admin actions scan once more on a miss; the request path stays on the snapshot."""
    make_adapter(tmp_path, "bot", "v1")
    reg = registry(tmp_path)
    assert reg.versions("bot") == ["v1"]
    make_adapter(tmp_path, "bot", "v2")
    with pytest.raises(NotFound):
        reg.snapshot.resolve("bot", "v2")
    assert reg.resolve_fresh("bot", "v2") == AdapterRef("bot", "v2")
    with pytest.raises(NotFound, match="published versions: v1, v2"):
        reg.resolve_fresh("bot", "v3")  # still a clear 404 after the rescan


def test_a_miss_rescans_at_most_once_per_interval(tmp_path: Path) -> None:
    """The request path: a version published since the last scan is found on its first request; a
    second miss within MISS_RESCAN_S costs no folder listing (a flood of unknown names is bounded)."""
    make_adapter(tmp_path, "bot", "v1")
    reg = registry(tmp_path)
    reg.MISS_RESCAN_S = 0.5
    assert reg.versions("bot") == ["v1"]
    make_adapter(tmp_path, "bot", "v2")
    assert reg.resolve("bot", "v2") == AdapterRef("bot", "v2")  # the miss rescanned
    make_adapter(tmp_path, "bot", "v3")
    with pytest.raises(NotFound):
        reg.resolve("bot", "v3")  # a miss rescanned a moment ago: no listing now
    time.sleep(0.6)
    assert reg.resolve("bot", "v3") == AdapterRef("bot", "v3")


def _scandir_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every os.scandir the registry makes from now on (the path it listed)."""
    import serving.registry as reg

    calls: list[str] = []
    real = reg.os.scandir

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(reg.os, "scandir", counting)
    return calls


def _age(folder: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(folder, (old, old))


def test_a_rescan_lists_only_the_name_folders_that_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway polls every second: with 40 settled names a rescan is one listing plus one stat per
    name; a publish, a removal and a new name are each seen at the next scan."""
    for i in range(40):
        make_adapter(tmp_path, f"a{i}", "v1")
        _age(tmp_path / f"a{i}", 60)
    reg = registry(tmp_path)
    reg.refresh()
    reg.refresh()  # a name whose mtime moved is listed twice, then it has settled
    calls = _scandir_calls(monkeypatch)
    assert len(reg.refresh().names) == 40 and calls == [str(tmp_path)]

    make_adapter(tmp_path, "a7", "v2")  # a publish renames into a7/: its mtime moves
    make_adapter(tmp_path, "new", "v1")
    shutil.rmtree(tmp_path / "a3")
    calls.clear()
    snap = reg.refresh()
    assert sorted(calls) == sorted([str(tmp_path), str(tmp_path / "a7"), str(tmp_path / "new")])
    assert snap.versions["a7"] == ("v1", "v2") and "new" in snap.versions and "a3" not in snap.versions
    assert reg.resolve("a7", None) == AdapterRef("a7", "v2")


def test_a_publish_in_the_same_clock_tick_as_a_listing_is_not_missed(tmp_path: Path) -> None:
    """File times tick coarsely: a version published in the tick of the previous listing leaves the
    folder's mtime unchanged (simulated by setting it back). A folder that recent is listed anyway."""
    make_adapter(tmp_path, "bot", "v1")
    reg = registry(tmp_path)
    reg.refresh()
    reg.refresh()
    before = (tmp_path / "bot").stat().st_mtime_ns
    make_adapter(tmp_path, "bot", "v2")
    os.utime(tmp_path / "bot", ns=(before, before))
    assert reg.refresh().versions["bot"] == ("v1", "v2")


def test_a_publish_no_mtime_rule_can_see_is_seen_at_the_next_full_listing(tmp_path: Path) -> None:
    """A writer on a shared volume with a lagging clock and coarse file times can publish and leave
    a settled folder's mtime as it was; every folder is listed again within FULL_RESCAN_NS anyway."""
    import dataclasses

    import serving.registry as reg_module

    make_adapter(tmp_path, "bot", "v1")
    _age(tmp_path / "bot", 60)
    reg = registry(tmp_path)
    reg.refresh()
    reg.refresh()  # settled
    before = (tmp_path / "bot").stat().st_mtime_ns
    make_adapter(tmp_path, "bot", "v2")
    os.utime(tmp_path / "bot", ns=(before, before))  # the mtime both rules trust
    assert reg.refresh().versions["bot"] == ("v1",)  # the miss this bounds
    snap = reg.snapshot
    reg._snapshot = dataclasses.replace(snap, listed_all_at_ns=snap.listed_all_at_ns - reg_module.FULL_RESCAN_NS)
    assert reg.refresh().versions["bot"] == ("v1", "v2")
