"""`loraplane rollout ...` against a real gateway (fake engine, SQLite): start, status, actions,
export in the trainer's formats, and the plot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from serving.gateway.auth import hash_key
from serving.rollouts import cli
from serving.rollouts.export import build
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import engine, gateway_app
from tests.serving.test_registry import make_adapter
from trainer.data import load_dataset_file

dirs = faults.dirs
ADMIN_KEY = "admin-secret"
AUTH = {
    "auth.enabled": True,
    "auth.admin_key_sha256": hash_key(ADMIN_KEY),
    "auth.keys": [{"name": "app", "sha256": hash_key("ka")}],
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def gateway(dirs, tmp_path: Path, monkeypatch):
    make_adapter(dirs[1], "bot", "v2")
    overrides = {"store.url": f"sqlite:///{tmp_path / 'lp.db'}", "rollouts.tick_s": 0.1, **AUTH}
    with (
        engine(tokens=3, ttft_ms=1.0, itl_ms=0.0) as eng,
        GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port()) as gw,
    ):
        yield gw


def test_start_status_actions_and_errors(gateway, capsys, monkeypatch) -> None:
    url = ["--url", gateway.url]
    code, _, err = run(capsys, *url, "start", "r", "--candidate", "bot@v2")
    assert code == 2 and "401" in err  # no admin key in the environment
    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    code, out, _ = run(
        capsys,
        *url,
        "start",
        "r",
        "--candidate",
        "bot@v2",
        "--steps",
        "20,100",
        "--guard",
        "error_rate:0.01",
        "--guard",
        "feedback:0",
        "--min-samples",
        "50",
        "--interval",
        "5",
    )
    assert code == 0 and "rollout r: running at 20% (bot@v2 vs bot@v1)" in out
    assert "guard error_rate" in out and "pending" in out
    code, _, err = run(capsys, *url, "start", "r2", "--candidate", "bot@v2")
    assert code == 2 and "409" in err and "already has rollout 'r'" in err
    code, _, err = run(capsys, *url, "start", "r3", "--candidate", "bot@v8")
    assert code == 2 and "404" in err and "v8" in err
    code, out, _ = run(capsys, *url, "status", "r", "--json")
    report = json.loads(out)
    assert report["steps"] == [20, 100] and report["min_samples"] == 50 and report["interval_s"] == 5.0
    assert [g["metric"] for g in report["guards"]] == ["error_rate", "feedback"]
    assert run(capsys, *url, "pause", "r", "--reason", "investigating")[1].startswith("rollout r: paused")
    code, out, _ = run(capsys, *url, "status")
    assert code == 0 and out.split()[:3] == ["r", "bot", "paused"]
    assert run(capsys, *url, "rollback", "r")[1].startswith("rollout r: rolled_back")
    code, _, err = run(capsys, *url, "resume", "r")
    assert code == 2 and "409" in err and "rolled_back" in err


def test_export_writes_trainer_and_trl_formats_with_a_manifest(gateway, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    url = ["--url", gateway.url]
    assert run(capsys, *url, "start", "r", "--candidate", "bot@v2", "--steps", "50,100", "--capture", "bodies")[0] == 0
    key = {"Authorization": "Bearer ka"}
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    for i, messages in enumerate(prompts):
        for max_tokens, score in ((3, 1.0), (1, 0.0)):  # two answers to one prompt, rated apart
            resp = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "bot", "messages": messages, "max_tokens": max_tokens, "user": f"u{i}"},
                headers=key,
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
            rated = httpx.post(
                f"{gateway.url}/v1/feedback", json={"id": resp.json()["id"], "score": score}, headers=key
            )
            assert rated.status_code == 200, rated.text
    out_dir = tmp_path / "export"
    code, out, err = run(capsys, *url, "export", "r", "--out", str(out_dir))
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["rollout"] == "r" and manifest["captures"] == 12 and manifest["rated"] == 12
    assert manifest["window"]["from"] <= manifest["window"]["to"]
    for name in ("sft.jsonl", "preferences.jsonl"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
    sft = load_dataset_file(str(out_dir / "sft.jsonl"))  # the trainer's own reader
    assert len(sft.conversations) == manifest["files"]["sft.jsonl"]["rows"] == 6 and sft.skipped == 0
    assert sft.conversations[0][-1]["role"] == "assistant"
    prefs = [json.loads(line) for line in (out_dir / "preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == 6
    for row in prefs:
        assert row["prompt"] in prompts and row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])  # 3 tokens beat 1


def test_build_skips_unusable_captures() -> None:
    good = {"request": {"messages": [{"role": "user", "content": "q"}]}, "response": "a", "score": 1.0, "status": 200}
    unusable = [
        {**good, "score": None},
        {**good, "status": 500},
        {**good, "response": ""},
        {**good, "request": {"messages": [{"role": "assistant", "content": "x"}]}},
    ]
    sft, prefs = build([good, *unusable], min_score=1.0, margin=0.5)
    assert sft == [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert prefs == []  # one answer only


def test_plot_draws_scores_and_weights_from_the_audit_log(tmp_path: Path) -> None:
    from serving.rollouts.plot import plot, series

    def record(at: float, pct: int, outcome: str, cand: float, ctrl: float) -> dict:
        fb = lambda m: {"n": 10, "mean": m, "ci": [m - 0.1, m + 0.1]}  # noqa: E731
        variants = {"candidate": {"feedback": fb(cand)}, "control": {"feedback": fb(ctrl)}}
        return {"at": at, "numbers": {"outcome": outcome, "report": {"step_percent": pct, "variants": variants}}}

    audit = [
        {"at": 0.0, "numbers": {"weights": {}}},
        record(1, 10, "hold", 0.5, 0.5),
        record(2, 10, "advance", 0.7, 0.5),
    ]
    assert series(audit)["percent"] == [10, 10] and series(audit)["t"] == [0, 1]
    png = plot(audit, "rollout r", tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
