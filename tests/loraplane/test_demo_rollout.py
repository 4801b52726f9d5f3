"""The demo's rollouts through a real gateway (fake engine, SQLite) and the real evaluator: v2 is
promoted only once the feedback interval excludes 0, an equal v2 is not promoted, and a candidate
that fails to load is rolled back by itself within 2 intervals while users keep getting answers.

The fake engine answers every version alike, so the simulated users' judgment is scripted per
version here (`demo_rollout.rate`); on the real engine it is exact match against the reference."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors import SafetensorError, safe_open

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from fakes.registry import write_mock_registry
from loraplane import demo_rollout
from serving.config import load_config
from serving.gateway.app import create_app
from serving.registry import AdapterRef, AdapterRegistry, read_base
from tests.conftest import GatewayThread, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [json.loads(line) for line in (REPO / "data/demo/heldout.jsonl").read_text().splitlines()]
FAST = ["--steps", "20,50,100", "--min-samples", "20", "--interval", "0.5"]


@contextmanager
def demo_gateway(tmp_path: Path, **engine: object) -> Iterator[str]:
    models, adapters = write_mock_registry(tmp_path, "smollm2-135m-instruct", "demo-json", ["v1", "v2", "v3"])
    cfg = load_config(
        None,
        {
            "registry.models_dir": str(models),
            "registry.adapters_dir": str(adapters),
            "rollouts.tick_s": 0.2,
            "store.url": f"sqlite:///{tmp_path / 'lp.db'}",
            "store.log_flush_interval_s": 0.05,
            "auth.local_dev_open_admin": True,  # as configs/serving/demo.yaml
        },
    )
    settings = MockSettings(tokens=2, ttft_ms=1.0, itl_ms=0.0, **engine)  # type: ignore[arg-type]
    engine_thread = GatewayThread(mock_engine_app(settings), free_port())
    with engine_thread as eng, GatewayThread(create_app(cfg, [eng.url], health_interval_s=0.2), free_port()) as gw:
        yield gw.url


def scripted(p_v1: float, p_v2: float):
    """A user's rating of version v, fixed per (answer id, version) like a deterministic judgment."""

    def rate(example: dict, answer: str, version: str | None) -> float:
        p = p_v2 if version == "demo-json@v2" else p_v1
        draw = int(hashlib.sha256(f"{example['messages'][0]['content']}|{id(answer)}".encode()).hexdigest(), 16)
        return float(draw % 1000 < p * 1000)

    return rate


def test_v2_is_promoted_on_evidence_and_the_interval_excludes_zero(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo_rollout, "rate", scripted(0.2, 0.8))
    with demo_gateway(tmp_path) as url:
        result = demo_rollout.promote_on_evidence(url, EXAMPLES, tmp_path, 300, 120, FAST)
    report, evidence = result["report"], result["evidence"]
    assert report["state"] == "promoted" and report["promote_when"] == "better", report["reason"]
    assert result["promoted_on_evidence"] and evidence["verdict"] == "better"
    assert evidence["gain_lo"] > 0 and evidence["gain_lo"] <= evidence["candidate_mean"] - evidence["control_mean"]
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"


def test_an_equal_v2_is_not_promoted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo_rollout, "rate", scripted(0.5, 0.5))
    with demo_gateway(tmp_path) as url:
        result = demo_rollout.promote_on_evidence(url, EXAMPLES, tmp_path, 80, 30, FAST)
    assert result["report"]["state"] == "running" and not result["promoted_on_evidence"], result["report"]
    evidence = result["evidence"]
    assert evidence["verdict"] in ("pending", "inconclusive"), evidence


def test_a_candidate_that_fails_to_load_is_rolled_back_within_two_intervals(tmp_path: Path) -> None:
    with demo_gateway(tmp_path, fail_load=("demo-json@v3",)) as url:
        result = demo_rollout.roll_back_broken(url, EXAMPLES, "demo-json@v3", interval_s=8.0)
    assert result["rolled_back_in_time"], result["report"]["reason"]
    assert result["answered"] == result["requests"], result["statuses"]  # retried on the control


def test_corrupt_copy_passes_the_registry_but_not_the_loader(tmp_path: Path) -> None:
    models, adapters = write_mock_registry(tmp_path, "smollm2-135m-instruct", "demo-json", ["v2", "v3"])
    demo_rollout.corrupt_copy(adapters / "demo-json" / "v2", tmp_path / "broken")
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # what gets published as v3
        (adapters / "demo-json" / "v3" / name).write_bytes((tmp_path / "broken" / name).read_bytes())
    registry = AdapterRegistry(adapters, read_base(models, "smollm2-135m-instruct"), 16)
    registry.validate(AdapterRef("demo-json", "v3"))  # header and files pass
    broken = str(tmp_path / "broken" / "adapter_model.safetensors")
    with pytest.raises(SafetensorError, match="not fully covered"), safe_open(broken, framework="np") as weights:
        list(weights.keys())
