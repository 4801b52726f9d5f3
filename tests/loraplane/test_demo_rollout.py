"""The demo's rollout step through a real gateway (fake engine, SQLite): it starts the rollout with
the CLI, sends rated users until the evaluator decides, and writes the plot."""

from __future__ import annotations

import json
from pathlib import Path

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from fakes.registry import write_mock_registry
from loraplane import demo_rollout
from serving.config import load_config
from serving.gateway.app import create_app
from tests.conftest import GatewayThread, free_port

REPO = Path(__file__).resolve().parents[2]


def test_demo_rollout_reaches_a_decision_and_plots_it(tmp_path: Path) -> None:
    models, adapters = write_mock_registry(tmp_path, "smollm2-135m-instruct", "demo-json", ["v1", "v2"])
    cfg = load_config(
        None,
        {
            "registry.models_dir": str(models),
            "registry.adapters_dir": str(adapters),
            "rollouts.tick_s": 0.2,
            "store.log_flush_interval_s": 0.05,
            "auth.local_dev_open_admin": True,  # as configs/serving/demo.yaml
        },
    )
    examples = [json.loads(line) for line in (REPO / "data/demo/heldout.jsonl").read_text().splitlines()]
    engine = GatewayThread(mock_engine_app(MockSettings(tokens=2, ttft_ms=1.0, itl_ms=0.0)), free_port())
    with engine as eng, GatewayThread(create_app(cfg, [eng.url], health_interval_s=0.2), free_port()) as gw:
        result = demo_rollout.run(gw.url, examples, tmp_path, max_users=200)
    report = result["report"]
    # The mock answers every version alike (score 0 for both): no regression, so 10 -> 50 -> promoted.
    assert report["state"] == "promoted", report
    assert report["variants"]["candidate"]["feedback"]["n"] >= 4
    assert result["users"] < 200
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"
