"""Rollouts through the gateway's admin API, on real SQLite and PostgreSQL, with fake engines:
bad input, the sticky split, automatic rollback and promotion by the evaluator (audited with its
numbers), manual actions, and decisions pausing while the database is gone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from fakes.servers import wait_for
from serving.store import Store
from serving.store.connect import create_db_engine
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import chat, engine
from tests.serving.test_gateway_faults import gateway_app as faults_app
from tests.serving.test_registry import make_adapter

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
FAST = {"rollouts.tick_s": 0.1, "rollouts.lease_s": 2.0, "store.log_flush_interval_s": 0.05}


def gateway_app(dirs, urls: list[str], **overrides):
    """A loopback gateway with the local-development admin switch (admin calls need no key)."""
    return faults_app(dirs, urls, **{"auth.local_dev_open_admin": True, **overrides})


def start(url: str, name: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/admin/rollouts/{name}", json=body, timeout=10)


def status(url: str, name: str) -> dict:
    resp = httpx.get(f"{url}/admin/rollouts/{name}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def users(url: str, n: int, model: str = "bot", offset: int = 0) -> list[httpx.Response]:
    """One request from each of n users, 8 at a time."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: chat(url, model, user=f"u{offset + i}"), range(n)))


QUICK = {"tokens": 1, "ttft_ms": 1.0, "itl_ms": 0.0}  # fake engine settings: answers at once


@pytest.fixture
def two_versions(dirs):
    make_adapter(dirs[1], "bot", "v2")
    return dirs


def test_bad_input_is_rejected_with_the_bad_value_named(two_versions, db_url: str) -> None:
    with GatewayThread(gateway_app(two_versions, [], **{"store.url": db_url}), free_port()) as gw:
        unknown = start(gw.url, "r1", candidate="bot@v9")
        assert unknown.status_code == 404 and "v9" in unknown.json()["error"]["message"]
        assert start(gw.url, "r1", candidate="nobody@v1").status_code == 404
        assert start(gw.url, "r1", candidate="bot@v2", control="bot@v7").status_code == 404
        same = start(gw.url, "r1", candidate="bot@v1")
        assert same.status_code == 400 and "both 'bot@v1'" in same.json()["error"]["message"]
        other = start(gw.url, "r1", candidate="bot@v2", control="other@v1")
        assert other.status_code == 400 and "not a version of 'bot'" in other.json()["error"]["message"]
        steps = start(gw.url, "r1", candidate="bot@v2", steps=[10, 50])
        assert steps.status_code == 400 and "end at 100" in steps.json()["error"]["message"]
        guard = start(gw.url, "r1", candidate="bot@v2", guards=["latency:0.1"])
        assert guard.status_code == 400 and "'latency' is not one of" in guard.json()["error"]["message"]
        assert start(gw.url, "Bad Name", candidate="bot@v2").status_code in (400, 404)
        for field, value, named in (
            ("better_on", 5, "better_on must be a guard's metric"),
            ("better_on", "grader:nobody", "no grader named 'nobody'"),
            ("min_gain", "lots", "min_gain"),
            ("min_gain", 2, "min_gain must be a number in (0, 1)"),
        ):
            extra = {"guards": ["feedback:0", "grader:nobody:0"]} if value == "grader:nobody" else {}
            bad = start(gw.url, "r1", candidate="bot@v2", **{field: value}, **extra)
            assert bad.status_code == 400 and named in bad.json()["error"]["message"], (field, value, bad.text)
        assert start(gw.url, "r1", candidate="bot@v2").status_code == 201
        again = start(gw.url, "r2", candidate="bot@v2")
        assert again.status_code == 409 and "already has rollout 'r1'" in again.json()["error"]["message"]
        assert start(gw.url, "r1", candidate="other@v1", control="other@v1").status_code in (400, 409)
        assert httpx.get(f"{gw.url}/admin/rollouts/nope").status_code == 404
        assert httpx.post(f"{gw.url}/admin/rollouts/r1/explode", json={}).status_code == 404
        assert httpx.post(f"{gw.url}/admin/rollouts/r1/resume", json={}).status_code == 409  # it is running


def test_split_is_sticky_per_user_and_every_response_names_its_version(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, "rollouts.evaluator": False}
    with engine(**QUICK) as eng, GatewayThread(gateway_app(two_versions, [eng.url], **overrides), free_port()) as gw:
        assert start(gw.url, "r1", candidate="bot@v2", steps=[25, 100]).status_code == 201
        first = [r.headers["x-loraplane-adapter"] for r in users(gw.url, 120)]
        again = [r.headers["x-loraplane-adapter"] for r in users(gw.url, 120)]
        report = wait_for(lambda: (s := status(gw.url, "r1"))["variants"]["candidate"]["requests"] >= 1 and s)
    assert first == again  # sticky per user
    assert set(first) == {"bot@v1", "bot@v2"}
    assert 0.1 < first.count("bot@v2") / len(first) < 0.45  # 25% of users
    assert report["state"] == "running" and report["weights"] == {"bot@v2": 25, "bot@v1": 75}
    assert report["step_percent"] == 25 and report["candidate"] == "bot@v2" and report["control"] == "bot@v1"


def test_a_slow_candidate_is_rolled_back_automatically_with_its_numbers(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, **FAST}
    settings = {"ttft_ms": 5.0, "itl_ms": 0.0, "tokens": 2, "slow_ms": {"bot@v2": 150.0}}
    with engine(**settings) as eng, GatewayThread(gateway_app(two_versions, [eng.url], **overrides), free_port()) as gw:
        body = {"candidate": "bot@v2", "steps": [50, 100], "min_samples": 20, "interval_s": 0.3}
        assert (
            start(gw.url, "slow", **body, guards=["ttft_p95:0", "error_rate:0"], promote_when="not_worse").status_code
            == 201
        )
        for wave in range(6):  # traffic goes on until the evaluator decides (a busy machine blurs latency)
            users(gw.url, 160, offset=160 * wave)
            if status(gw.url, "slow")["state"] != "running":
                break
        final = wait_for(lambda: (s := status(gw.url, "slow"))["state"] != "running" and s)
        after = {r.headers["x-loraplane-adapter"] for r in users(gw.url, 30, offset=10_000)}
        metrics = httpx.get(f"{gw.url}/metrics").text
        audit = httpx.get(f"{gw.url}/admin/audit", params={"subject": "slow"}).json()["data"]
    assert final["state"] == "rolled_back", final
    assert "ttft_p95" in final["reason"]
    assert final["weights"] == {"bot@v2": 0, "bot@v1": 100}
    guard = next(g for g in final["guards"] if g["metric"] == "ttft_p95")
    assert guard["verdict"] == "fail" and guard["worsening_lo"] > 0
    assert after == {"bot@v1"}  # traffic is back on the stable version
    rollback = next(a for a in audit if a["action"] == "rollout.rollback")
    assert rollback["actor"].startswith("evaluator:") and rollback["numbers"]["report"]["guards"]
    assert 'loraplane_rollout_decisions_total{outcome="rollback",rollout="slow"} 1.0' in metrics
    assert 'loraplane_rollout_state{rollout="slow",state="rolled_back"} 1.0' in metrics


def test_better_feedback_promotes_and_moves_the_stable_pointer(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, **FAST}
    with (
        engine(tokens=2, ttft_ms=1.0, itl_ms=0.0) as eng,
        GatewayThread(gateway_app(two_versions, [eng.url], **overrides), free_port()) as gw,
    ):
        body = {"candidate": "bot@v2", "steps": [50, 100], "min_samples": 30, "interval_s": 0.3}
        assert start(gw.url, "good", **body, guards={"feedback": 0.0}).status_code == 201
        for resp in users(gw.url, 200):
            score = 1.0 if resp.headers["x-loraplane-adapter"] == "bot@v2" else 0.0
            assert (
                httpx.post(f"{gw.url}/v1/feedback", json={"id": resp.json()["id"], "score": score}).status_code == 200
            )
        final = wait_for(lambda: (s := status(gw.url, "good"))["state"] != "running" and s)
        bare = wait_for(lambda: chat(gw.url, "bot", user="new").headers["x-loraplane-adapter"] == "bot@v2")
        adapters = {a["id"]: a["stable"] for a in httpx.get(f"{gw.url}/admin/adapters").json()["data"]}
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert final["state"] == "promoted", final
    assert "better" in final["reason"] and bare
    fb = final["variants"]["candidate"]["feedback"]
    assert fb["mean"] == 1.0 and fb["n"] >= 20 and fb["ci"][0] > final["variants"]["control"]["feedback"]["ci"][1]
    assert adapters["bot@v2"] and not adapters["bot@v1"]
    assert 'loraplane_rollout_step_percent{rollout="good"} 100.0' in metrics


def test_manual_pause_resume_promote_and_terminal_states(two_versions, db_url: str) -> None:
    overrides = {"store.url": db_url, "rollouts.evaluator": False}
    with GatewayThread(gateway_app(two_versions, [], **overrides), free_port()) as gw:
        assert start(gw.url, "m", candidate="bot@v2").status_code == 201
        paused = httpx.post(f"{gw.url}/admin/rollouts/m/pause", json={"reason": "weekend"}).json()
        assert paused["state"] == "paused" and paused["reason"] == "weekend"
        assert httpx.post(f"{gw.url}/admin/rollouts/m/resume", json={}).json()["state"] == "running"
        promoted = httpx.post(f"{gw.url}/admin/rollouts/m/promote", json={}).json()
        assert promoted["state"] == "promoted" and promoted["weights"]["bot@v2"] == 100
        undone = httpx.post(f"{gw.url}/admin/rollouts/m/rollback", json={"reason": "regressed after promotion"})
        assert undone.status_code == 200 and undone.json()["state"] == "rolled_back"  # the control is stable again
        again = httpx.post(f"{gw.url}/admin/rollouts/m/rollback", json={})
        assert again.status_code == 409 and "rolled_back" in again.json()["error"]["message"]
        listed = httpx.get(f"{gw.url}/admin/rollouts").json()["data"]
    assert [(r["name"], r["state"]) for r in listed] == [("m", "rolled_back")]
    store = Store(create_db_engine(db_url))
    assert store.stable_versions()["bot"] == "v1"
    actions = [a.action for a in store.audit_log("m")]
    assert actions == ["rollout.start", "rollout.pause", "rollout.resume", "rollout.promote", "rollout.rollback"]


def test_database_lost_pauses_decisions_and_serving_goes_on(two_versions, postgres_server_url: str) -> None:
    from tests.serving.conftest import new_postgres_database

    url = new_postgres_database(postgres_server_url)
    name = sa.make_url(url).database
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")

    def connections(allow: bool) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(
                    sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )

    overrides = {"store.url": url, **FAST}
    with engine(**QUICK) as eng, GatewayThread(gateway_app(two_versions, [eng.url], **overrides), free_port()) as gw:
        assert start(gw.url, "r", candidate="bot@v2", steps=[50, 100], min_samples=10_000).status_code == 201
        before = {r.headers["x-loraplane-adapter"] for r in users(gw.url, 40)}
        connections(False)
        try:
            paused = wait_for(lambda: (s := status(gw.url, "r"))["state"] == "paused" and s)
            served = users(gw.url, 40)
            metrics = httpx.get(f"{gw.url}/metrics").text
        finally:
            connections(True)
        resumed = wait_for(lambda: (s := status(gw.url, "r"))["state"] == "running" and s)
    admin.dispose()
    assert "database is unreachable" in paused["reason"]
    assert [r.status_code for r in served] == [200] * 40
    assert {r.headers["x-loraplane-adapter"] for r in served} == before == {"bot@v1", "bot@v2"}  # last weights
    assert 'loraplane_rollout_decisions_total{outcome="pause",rollout="r"} 1.0' in metrics
    assert 'loraplane_rollout_state{rollout="r",state="paused"} 1.0' in metrics
    assert resumed["weights"] == {"bot@v2": 50, "bot@v1": 50}
