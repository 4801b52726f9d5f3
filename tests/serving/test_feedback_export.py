"""`loraplane feedback export` through GET /admin/feedback/export: an adapter's captured traffic
(config `adapters: [{capture: bodies}]`) generated with the real `openai` client against the mock
engine, rated by users and by a grader, exported page by page; keys with train_opt_out never are."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from serving.gateway.auth import hash_key
from serving.rollouts import feedback_cli
from tests.conftest import GatewayThread
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import engine, gateway_app
from trainer.preferences import load_rated_file

dirs = faults.dirs
ADMIN_KEY = "admin-secret"
CONFIG = {
    "auth.enabled": True,
    "auth.admin_key_sha256": hash_key(ADMIN_KEY),
    "auth.keys": [
        {"name": "app", "sha256": hash_key("ka")},
        {"name": "private", "sha256": hash_key("kp"), "train_opt_out": True},
    ],
    "adapters": [{"name": "bot", "capture": "bodies"}],
    "graders": [{"name": "json_valid", "kind": "json_valid"}],
}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def gateway(dirs, tmp_path: Path):
    replies = {"bot@v1": '{"answer": 42}', "other@v1": "not json"}
    with (
        engine(tokens=3, ttft_ms=1.0, itl_ms=0.0, replies=replies) as eng,
        GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": f"sqlite:///{tmp_path / 'lp.db'}", **CONFIG})) as gw,
    ):
        yield gw


def traffic(url: str) -> dict[str, list[str]]:
    """Chat completions with the openai client; user ratings on app's answers. Response ids by key."""
    ids: dict[str, list[str]] = {"app": [], "private": [], "other": []}
    for key, name, model, n in (("ka", "app", "bot", 6), ("kp", "private", "bot", 2), ("ka", "other", "other", 2)):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        for i in range(n):
            messages = [{"role": "user", "content": f"{name} question {i}"}]
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=3, user=f"{name}{i}")
            assert reply.choices[0].message.content
            ids[name].append(reply.id)
            score = 1.0 if i % 2 == 0 else 0.0
            rated = httpx.post(f"{url}/v1/feedback", json={"id": reply.id, "score": score}, headers=_auth(key))
            assert rated.status_code == 200, rated.text
    return ids


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def export(capsys, url: str, out: Path, *extra: str) -> tuple[int, str, str]:
    code = feedback_cli.main(["export", "--url", url, "--adapter", "bot", "--out", str(out), *extra])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def wait_graded(url: str, n: int) -> None:
    params = {"adapter": "bot", "label_source": "grader:json_valid"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        page = httpx.get(f"{url}/admin/feedback/export", params=params, headers=ADMIN).json()
        if sum(1 for c in page["data"] if c["score"] is not None) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the grader did not score {n} answers in 15 s: {page}")


def test_feedback_export_pages_through_rated_traffic_and_skips_opted_out_keys(
    gateway, capsys, monkeypatch, tmp_path: Path
) -> None:
    ids = traffic(gateway.url)
    code, _, err = export(capsys, gateway.url, tmp_path / "no-key")
    assert code == 2 and "401" in err  # the admin key is required
    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    out = tmp_path / "bot"
    code, printed, err = export(capsys, gateway.url, out, "--page-size", "4")  # 8 rows: three pages
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapter"] == "bot" and manifest["captures"] == 6 and manifest["opted_out"] == 2
    assert manifest["rated"] == 6 and manifest["label_source"] == "user"
    kto = manifest["files"]["kto.jsonl"]
    assert kto["rows"] == 6 and kto["desirable"] == 3 and kto["undesirable"] == 3
    for name in ("sft.jsonl", "preferences.jsonl", "kto.jsonl"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    text = (out / "kto.jsonl").read_text()
    assert "app question" in text and "private question" not in text and "other question" not in text
    rows = load_rated_file(str(out / "kto.jsonl"))
    assert rows.conversations[0][-1] == {"role": "assistant", "content": '{"answer": 42}'}
    assert "6 captures, 0 corrected; 2 left out for train_opt_out keys" in printed
    logged = {r.id: r for r in gateway.state.store.requests()}
    assert all(logged[i].request_body is not None for i in ids["app"] + ids["private"])  # adapters[].capture
    assert all(logged[i].request_body is None for i in ids["other"])  # no capture setting: no bodies

    # The grader scored every captured answer (off the request path); its scores label the export.
    wait_graded(gateway.url, 6)
    graded = tmp_path / "graded"
    code, _, err = export(capsys, gateway.url, graded, "--label-source", "grader:json_valid")
    assert code == 0, err
    manifest = json.loads((graded / "manifest.json").read_text())
    assert manifest["label_source"] == "grader:json_valid" and manifest["files"]["kto.jsonl"]["desirable"] == 6
    # The user-feedback metric is unchanged by grader scores; the grader's own are per variant.
    metrics = httpx.get(f"{gateway.url}/metrics", headers=ADMIN).text
    assert 'loraplane_grader_scored_total{grader="json_valid",variant="bot@v1"} 8.0' in metrics
    assert 'loraplane_feedback_total{model="bot",variant="bot@v1"} 8.0' in metrics


def test_feedback_export_refuses_bad_requests(gateway, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    code, _, err = export(capsys, gateway.url, tmp_path / "x", "--label-source", "grader:nope")
    assert code == 2 and "400" in err and "grader:json_valid" in err  # names what exists
    url = f"{gateway.url}/admin/feedback/export"
    assert httpx.get(url, params={"adapter": "bot", "limit": 5000}, headers=ADMIN).status_code == 400  # bounded
    bad = httpx.get(url, params={"adapter": "bot", "after": "yesterday"}, headers=ADMIN)
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]["message"]
    empty = httpx.get(url, params={"adapter": "bot", "version": "v9"}, headers=ADMIN).json()
    assert empty["data"] == [] and empty["next"] is None


def test_when_parses_times() -> None:
    assert feedback_cli.when("1765000000") == 1765000000.0
    assert feedback_cli.when("2026-12-07T00:00") == feedback_cli.when("2026-12-07T00:00:00+00:00")
    assert abs(feedback_cli.when("1h") - (time.time() - 3600)) < 5


def test_rollout_export_writes_kto_and_leaves_out_opted_out_keys(gateway, capsys, monkeypatch, tmp_path: Path) -> None:
    from serving.rollouts import cli as rollout_cli
    from tests.serving.test_registry import make_adapter

    monkeypatch.setenv("LORAPLANE_ADMIN_KEY", ADMIN_KEY)
    make_adapter(faults_dirs(gateway), "bot", "v2")
    url = f"{gateway.url}/admin/rollouts/r"
    unknown = httpx.post(url, json={"candidate": "bot@v2", "guards": ["grader:nope:0"]}, headers=ADMIN)
    assert unknown.status_code == 400 and "no grader named 'nope'" in unknown.json()["error"]["message"]
    body = {"candidate": "bot@v2", "guards": ["grader:json_valid:0"], "promote_when": "no_regression"}
    assert httpx.post(url, json={**body, "capture": "bodies"}, headers=ADMIN).status_code == 201
    traffic(gateway.url)
    code = rollout_cli.main(["--url", gateway.url, "export", "r", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["rollout"] == "r" and manifest["captures"] == 6 and manifest["opted_out"] == 2
    assert manifest["files"]["kto.jsonl"]["rows"] == 6
    assert "private question" not in (tmp_path / "r" / "kto.jsonl").read_text()
    assert rollout_cli.main(["--url", gateway.url, "status", "r"]) == 0
    shown = capsys.readouterr().out
    assert "guard grader:json_valid" in shown and shown.count("grader:json_valid n=") == 2  # per variant


def faults_dirs(gateway) -> Path:
    return gateway.state.cfg.registry.adapters_dir
