"""The demo's loop step (loraplane/demo_loop.py) through a real gateway (fake engine, SQLite, the
adapter's bodies captured as configs/serving/demo.yaml does) and the real `loraplane loop`, its
commands replaced by the loop's fakes (fakes/loop_commands.py): users' ratings of the stable version
reach `feedback export`, the loop's rollout gets users while it runs and ends with an outcome, and
the report (line, plot, failures) says what happened. The real engine's run is the demo itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from fakes.registry import write_mock_registry
from loraplane import demo_loop
from loraplane.loop.spec import load_spec
from serving.config import load_config
from serving.gateway.app import create_app
from tests.conftest import GatewayThread, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [json.loads(line) for line in (REPO / "data/demo/heldout.jsonl").read_text().splitlines()]
FAKE = [sys.executable, "-m", "fakes.loop_commands"]


@contextmanager
def demo_gateway(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(gateway url, store url, adapters dir): demo-json v1 (stable) and v2."""
    models, adapters = write_mock_registry(tmp_path, "smollm2-135m-instruct", "demo-json", ["v1", "v2"])
    store_url = f"sqlite:///{tmp_path / 'lp.db'}"
    demo = yaml.safe_load((REPO / "configs/serving/demo.yaml").read_text())
    cfg = load_config(
        None,
        {
            "registry.models_dir": str(models),
            "registry.adapters_dir": str(adapters),
            "rollouts.tick_s": 0.2,
            "store.url": store_url,
            "store.log_flush_interval_s": 0.05,
            "auth.local_dev_open_admin": True,
            "adapters": demo["adapters"],  # the shipped demo config's capture
        },
    )
    engine = GatewayThread(mock_engine_app(MockSettings(tokens=2, ttft_ms=1.0, itl_ms=0.0)), free_port())
    with engine as eng, GatewayThread(create_app(cfg, [eng.url], health_interval_s=0.2), free_port()) as gw:
        yield gw.url, store_url, adapters


def test_the_stable_versions_ratings_are_what_the_loop_exports(tmp_path: Path) -> None:
    with demo_gateway(tmp_path) as (url, _, _):
        since = time.time()
        ratings = demo_loop.rate_stable(url, EXAMPLES[:12], n_users=12, seed=3)
        out = tmp_path / "export"
        argv = ["feedback", "export", "--url", url, "--adapter", "demo-json", "--since", repr(since), "--out", str(out)]
        subprocess.run([sys.executable, "-m", "loraplane", *argv], cwd=REPO, check=True, capture_output=True)
    assert ratings["requests"] >= 12 and 0 < ratings["rated"] <= ratings["requests"]
    assert ratings["thumbs_up"] == 0  # the fake engine never says the reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["corrections"] == ratings["corrections"] > 0  # a few users also sent the right answer
    kto = manifest["files"]["kto.jsonl"]
    assert 0 < kto["rows"] <= ratings["rated"] + ratings["corrections"]  # deduplicated
    rows = [json.loads(line) for line in (out / "kto.jsonl").read_text().splitlines()]
    references = {e["messages"][-1]["content"] for e in EXAMPLES[:12]}
    # Every desirable row is a user's correction (the reference); the engine's own answers are all thumbs down.
    assert {r["completion"][0]["content"] for r in rows if r["label"]} <= references
    assert all(r["completion"][0]["content"] not in references for r in rows if not r["label"])
    assert kto["desirable"] <= ratings["corrections"]


def test_the_spec_is_the_shipped_one_pointed_at_this_demo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the shipped spec's paths are relative to the repository
    path = demo_loop.write_spec(tmp_path, "http://127.0.0.1:8123", "sqlite:///x.db", since=123.5, budget_s=420)
    spec, shipped = load_spec(path), load_spec(REPO / "configs/loop/demo-json.yaml")
    assert spec.gateway.url == "http://127.0.0.1:8123" and spec.store_url == "sqlite:///x.db"
    assert spec.data.since == 123.5 and spec.work_dir == tmp_path / "loop"
    assert spec.rollout.min_samples == 20 and spec.rollout.interval_s == 5 and spec.rollout.wait_timeout_s == 420
    # everything that decides the iteration is the shipped spec's
    for key in ("trigger", "data", "train", "gate"):
        assert getattr(spec, key).model_dump(exclude={"since"}) == getattr(shipped, key).model_dump(exclude={"since"})
    assert (spec.rollout.shadow, spec.rollout.steps, spec.rollout.guards) == (
        shipped.rollout.shadow,
        shipped.rollout.steps,
        shipped.rollout.guards,
    )


def test_the_loop_runs_with_users_during_its_rollout_and_reports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    with demo_gateway(tmp_path) as (url, store_url, adapters):
        path = demo_loop.write_spec(tmp_path, url, store_url, since=0.0, budget_s=60)
        spec = yaml.safe_load(path.read_text())
        spec["adapters_dir"] = str(adapters)
        spec["data"]["command"] = [*FAKE, "export", "--rows", "60"]
        spec["train"]["command"] = [*FAKE, "train"]
        spec["gate"]["command"] = [*FAKE, "eval", "--scores", "0.50,0.52"]
        # the fake engine answers every version alike: a rule the feedback guard can decide quickly
        spec["rollout"].update(
            shadow=50,
            steps=[50, 100],
            guards=["error_rate:0.05"],
            promote_when="no_regression",
            better_on=None,
            min_gain=None,
        )
        spec["rollout"].update(min_samples=10, interval_s=0.3, poll_s=0.2)
        path.write_text(yaml.safe_dump(spec))
        step = demo_loop.run_loop(url, path, EXAMPLES, max_users=400, budget_s=60)
    it = step["iteration"]
    assert step["exit_code"] == 0 and step["requests"] > 0 and step["users"] > 0
    assert it["stage"] == "done" and it["outcome"] == "promoted" and it["version"] == "v3"
    assert it["rollout"] == "demo-json-v3" and it["details"]["gate"]["passed"]
    line = demo_loop.describe_iteration(it)
    assert "v1 -> v3 by kto on 60 rated answers" in line and "0.500 -> 0.520 (pass" in line and "promoted" in line
    assert demo_loop.failures({"loop": step, "spec": str(path)}) == []
    assert demo_loop.gated_version(it) == {"model": "demo-json@v3", "exact_match": 0.52, "source": "gate"}


def report_iteration(**changes) -> dict:
    it = {
        "id": 1,
        "stage": "done",
        "stable": "v2",
        "version": "v4",
        "method": "kto",
        "rollout": "demo-json-v4",
        "outcome": "rolled_back",
        "reason": "guard feedback: candidate worse",
        "details": {
            "export": {"rows": {"kto.jsonl": 150}},
            "gate": {"metric": "exact_match", "stable": 0.583, "new": 0.604, "margin": 0.02, "passed": True},
        },
    }
    return {**it, **changes}


def test_a_version_stopped_before_its_gate_has_no_held_out_number() -> None:
    assert demo_loop.gated_version(report_iteration(details={"export": {"rows": {}}})) is None
    assert demo_loop.gated_version(report_iteration(version=None)) is None
    assert demo_loop.gated_version(report_iteration())["exact_match"] == 0.604


def test_the_report_line_plot_and_failures(tmp_path: Path) -> None:
    results = [
        {"model": "smollm2-135m-instruct", "exact_match": 0.0},
        {"model": "demo-json@v1", "exact_match": 0.1667},
        {"model": "demo-json@v2", "exact_match": 0.5833},
        {"model": "demo-json@v4", "exact_match": 0.6042},
    ]
    assert demo_loop.describe_versions(results) == "base 0.000 -> v1 0.167 -> v2 0.583 -> v4 0.604"
    png = demo_loop.write_loop_plot(results, report_iteration(), tmp_path / "loop.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    def failures(code: int, **changes) -> list[str]:
        return demo_loop.failures({"loop": {"exit_code": code, "iteration": report_iteration(**changes)}, "spec": "s"})

    assert failures(0) == []  # rolled back by the evaluator: the loop worked
    assert failures(0, stage="stopped", outcome="gate_failed") == []  # the gate stopped a worse version
    assert "too_little_data" in failures(0, stage="stopped", outcome="too_little_data")[0]
    assert "did not end (exit 3, stage rollout" in failures(3, stage="rollout", outcome=None)[0]
    # out of users before the evaluator had evidence: it holds (printed as undecided), not a failure
    undecided = {
        "exit_code": 3,
        "iteration": report_iteration(stage="rollout", outcome=None),
        "rollout_state": "running",
    }
    assert demo_loop.failures({"loop": undecided, "spec": "s"}) == []


@pytest.mark.parametrize("missing", ["gate", "export"])
def test_the_report_line_without_a_gate_or_an_export(missing: str) -> None:
    it = report_iteration(stage="stopped", outcome="not_due", version=None, rollout=None)
    it["details"] = {k: v for k, v in it["details"].items() if k != missing}
    line = demo_loop.describe_iteration(it)
    assert "v2 -> -" in line and "rollout -: not_due" in line
