"""The gateway's control plane on real SQLite and PostgreSQL, with fake engines: stable versions,
promote, persisted experiments, name clashes, the request log with response ids, feedback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import sqlalchemy as sa

from fakes.servers import wait_for
from serving.gateway.auth import hash_key
from serving.store import Store
from serving.store.connect import create_db_engine
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import BASE, MSG, chat, engine
from tests.serving.test_registry import make_adapter

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
ADMIN = {"Authorization": "Bearer admin"}
AUTH = {
    "auth.enabled": True,
    "auth.admin_key_sha256": hash_key("admin"),
    "auth.keys": [{"name": "alice", "sha256": hash_key("ka")}, {"name": "bob", "sha256": hash_key("kb")}],
}


def gateway_app(dirs, urls, **overrides):
    """The admin API is closed without an admin key: these tests hold one."""
    return faults.gateway_app(dirs, urls, **{"auth.admin_key_sha256": hash_key("admin"), **overrides})


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_store(url: str) -> Store:
    return Store(create_db_engine(url))


def test_bare_name_is_the_stable_version_until_promoted(dirs, db_url: str) -> None:
    make_adapter(dirs[1], "bot", "v2")
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": db_url}), free_port()) as gw:
        assert chat(gw.url, "bot").headers["x-loraplane-adapter"] == "bot@v1"  # v2 is newer, v1 is stable
        assert chat(gw.url, "bot@v2").headers["x-loraplane-adapter"] == "bot@v2"  # pinned
        listed = {a["id"]: a["stable"] for a in httpx.get(f"{gw.url}/admin/adapters", headers=ADMIN).json()["data"]}
        assert listed["bot@v1"] and not listed["bot@v2"]
        resp = httpx.post(f"{gw.url}/admin/adapters/bot/v2/promote", headers=ADMIN, json={"reason": "better eval"})
        assert resp.status_code == 200 and resp.json() == {"id": "bot@v2", "stable": "v2", "previous": "v1"}
        assert chat(gw.url, "bot").headers["x-loraplane-adapter"] == "bot@v2"
        assert httpx.post(f"{gw.url}/admin/adapters/bot/v9/promote", headers=ADMIN, json={}).status_code == 404
        audit = httpx.get(f"{gw.url}/admin/audit", headers=ADMIN, params={"subject": "bot"}).json()["data"]
    assert [(a["action"], a["actor"]) for a in audit] == [("stable.init", "gateway"), ("stable.set", "admin")]
    assert audit[1]["reason"] == "better eval" and audit[1]["numbers"] == {"from": "v1", "to": "v2"}


def test_adapters_promote_during_a_rollout_is_409_naming_it_even_before_the_poll(
    dirs, db_url: str, capsys, monkeypatch
) -> None:
    """The rollout is started behind this replica's back (another replica, straight in the store),
    so its snapshot may not show it yet: the store refuses the pointer move in the write itself."""
    from serving.cli import adapters_main
    from serving.config import RolloutsConfig
    from serving.rollouts.actions import new_rollout

    make_adapter(dirs[1], "bot", "v2")
    with GatewayThread(gateway_app(dirs, [], **{"store.url": db_url}), free_port()) as gw:
        store = open_store(db_url)
        spec = RolloutsConfig().spec()
        store.create_rollout(new_rollout("canary", "bot@v2", "bot@v1", spec, "none", 0.0), actor="other-replica")
        resp = httpx.post(f"{gw.url}/admin/adapters/bot/v2/promote", headers=ADMIN, json={})
        monkeypatch.setenv("LORAPLANE_ADMIN_KEY", "admin")
        code = adapters_main(["promote", "bot@v2", "--gateway", gw.url])  # `loraplane adapters promote`
    assert resp.status_code == 409 and "rollout 'canary'" in resp.json()["error"]["message"], resp.text
    assert code == 2 and "rollout 'canary'" in capsys.readouterr().err
    assert store.stable_versions()["bot"] == "v1"
    store.close()


def test_experiment_named_like_an_adapter_or_the_base_is_409(dirs, db_url: str) -> None:
    with GatewayThread(gateway_app(dirs, [], **{"store.url": db_url}), free_port()) as gw:
        for name, clash in (("bot", "adapter 'bot'"), (BASE, "base model")):
            resp = httpx.put(f"{gw.url}/admin/experiments/{name}", headers=ADMIN, json={"variants": {"other@v1": 1}})
            assert resp.status_code == 409 and clash in resp.json()["error"]["message"], resp.text
        resp = httpx.put(f"{gw.url}/admin/experiments/ab", headers=ADMIN, json={"variants": {"bot@v7": 1}})
        assert resp.status_code == 404 and "v7" in resp.json()["error"]["message"]


def test_experiments_are_stored_and_survive_a_restart(dirs, db_url: str) -> None:
    with engine() as eng:
        app = gateway_app(dirs, [eng.url], **{"store.url": db_url})
        with GatewayThread(app, free_port()) as gw:
            body = {"variants": {"bot@v1": 0, "other@v1": 1}, "reason": "try other"}
            assert httpx.put(f"{gw.url}/admin/experiments/ab", headers=ADMIN, json=body).status_code == 200
            assert chat(gw.url, "ab").headers["x-loraplane-adapter"] == "other@v1"
        with GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": db_url}), free_port()) as gw:
            assert chat(gw.url, "ab").headers["x-loraplane-adapter"] == "other@v1"
            experiments = httpx.get(f"{gw.url}/admin/experiments", headers=ADMIN).json()["data"]
    assert experiments == [{"name": "ab", "variants": {"bot@v1": 0, "other@v1": 1}, "capture": "none"}]


def test_every_completion_is_logged_under_the_id_the_client_got(dirs, db_url: str) -> None:
    overrides = {"store.url": db_url, **AUTH}
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        plain = chat(gw.url, "bot", headers=as_key("ka"))
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "bot", "messages": MSG, "stream": True},
            headers=as_key("kb"),
            timeout=30,
        ) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
        stream_id = httpx.Response(200, content=lines[0][6:]).json()["id"]
    store = open_store(db_url)  # the gateway wrote everything on shutdown
    logged = store.get_requests([plain.json()["id"], stream_id])
    first, second = logged[plain.json()["id"]], logged[stream_id]
    assert (first.key_name, first.variant, first.status, first.model) == ("alice", "bot@v1", 200, "bot")
    assert first.completion_tokens == plain.json()["usage"]["completion_tokens"] and first.ttft_s is None
    assert second.key_name == "bob" and second.ttft_s is not None and 0 < second.ttft_s <= second.latency_s
    assert second.completion_tokens and first.request_body is None and first.response_text is None


def test_feedback_rules(dirs, db_url: str) -> None:
    overrides = {"store.url": db_url, **AUTH}
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        rid = chat(gw.url, "bot", headers=as_key("ka")).json()["id"]

        def rate(body: dict, key: str = "ka") -> httpx.Response:
            return httpx.post(f"{gw.url}/v1/feedback", json=body, headers=as_key(key), timeout=10)

        # the record may still sit in the writer's queue: feedback must find it anyway
        first = rate({"id": rid, "score": 0, "label": "thumbs_down"})
        assert first.status_code == 200, first.text
        assert first.json()["variant"] == "bot@v1"
        assert rate({"id": rid, "score": 1, "comment": "on reflection, fine"}).status_code == 200
        assert rate({"id": "chatcmpl-unknown", "score": 1}).status_code == 404
        for bad in (1.5, -0.1, "1", True, None):
            resp = rate({"id": rid, "score": bad})
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "score", bad
        assert rate({"id": rid, "score": 1}, key="kb").status_code == 403  # not bob's response
        assert rate({"id": rid, "score": 0.5}, key="admin").status_code == 200  # admin may
        assert httpx.post(f"{gw.url}/v1/feedback", json={"id": rid, "score": 1}).status_code == 401
        metrics = httpx.get(f"{gw.url}/metrics", headers=ADMIN).text
    assert 'loraplane_feedback_total{model="bot",variant="bot@v1"} 3.0' in metrics
    assert 'loraplane_feedback_score_sum{model="bot",variant="bot@v1"} 1.5' in metrics
    stored = open_store(db_url).get_feedback(rid)
    assert stored is not None and stored.score == 0.5 and stored.key_name == "admin"  # the repeat replaced it


def test_bodies_are_captured_only_when_the_experiment_asks(dirs, db_url: str) -> None:
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": db_url}), free_port()) as gw:
        body = {"variants": {"bot@v1": 1}, "capture": "bodies"}
        assert httpx.put(f"{gw.url}/admin/experiments/ab", headers=ADMIN, json=body).status_code == 200
        captured = chat(gw.url, "ab").json()
        plain = chat(gw.url, "bot").json()
    store = open_store(db_url)
    record = store.get_request(captured["id"])
    assert record.experiment == "ab" and record.request_body["messages"] == MSG
    assert record.response_text == captured["choices"][0]["message"]["content"] != ""
    assert store.get_request(plain["id"]).request_body is None


def test_database_lost_while_serving_keeps_serving_and_counts_drops(dirs, postgres_server_url: str) -> None:
    from tests.serving.conftest import new_postgres_database

    url = new_postgres_database(postgres_server_url)
    overrides = {"store.url": url, "store.log_flush_interval_s": 0.05}
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        assert chat(gw.url, "bot").status_code == 200
        name = sa.make_url(url).database
        admin_engine = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as conn:  # the database goes away under the running gateway
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin_engine.dispose()
        statuses = [chat(gw.url, "bot", stream=i % 2 == 0).status_code for i in range(40)]
        assert statuses == [200] * 40  # 0 failed requests
        assert chat(gw.url, "bot").headers["x-loraplane-adapter"] == "bot@v1"  # still the stable version

        def dropped() -> float:
            text = httpx.get(f"{gw.url}/metrics").text
            line = next(x for x in text.splitlines() if x.startswith("loraplane_request_log_dropped_total"))
            return float(line.split()[-1])

        assert wait_for(lambda: dropped() >= 40)
        resp = httpx.post(f"{gw.url}/v1/feedback", json={"id": "chatcmpl-x", "score": 1}, timeout=20)
        assert resp.status_code == 503 and "database" in resp.json()["error"]["message"]


def serve_gateway_only(config: Path) -> subprocess.CompletedProcess[str]:
    """`loraplane serve --gateway-only` with this config, to see it refuse at start (exit 2)."""
    cmd = [sys.executable, "-m", "loraplane", "serve", "--config", str(config), "--gateway-only",
           "--engine-url", "http://127.0.0.1:9"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_unreachable_database_at_start_names_the_url_without_password(dirs, tmp_path: Path) -> None:
    config = tmp_path / "serving.yaml"
    config.write_text(
        f"registry:\n  models_dir: {dirs[0]}\n  adapters_dir: {dirs[1]}\n"
        f"store:\n  url: postgresql://lp:hunter2@127.0.0.1:{free_port()}/lp\n  connect_timeout_s: 1\n"
    )
    out = serve_gateway_only(config)
    assert out.returncode == 2, out.stderr
    assert "lp:***@127.0.0.1" in out.stderr and "hunter2" not in out.stderr + out.stdout


def test_config_experiment_named_like_an_adapter_is_skipped_at_start_not_fatal(dirs, tmp_path: Path) -> None:
    """A restarted pod would meet the same clash: the CLI warns and goes on (here it then stops at the
    unreachable database, which is fatal), so a clash never crash-loops a gateway."""
    config = tmp_path / "serving.yaml"
    config.write_text(
        f"registry:\n  models_dir: {dirs[0]}\n  adapters_dir: {dirs[1]}\n"
        f"store:\n  url: postgresql://lp@127.0.0.1:{free_port()}/lp\n  connect_timeout_s: 1\n"
        "experiments:\n  - name: bot\n    variants: {other@v1: 1}\n"
    )
    (dirs[0] / BASE / "config.json").write_text("{}")
    out = serve_gateway_only(config)
    assert "warning: experiments: name 'bot' clashes" in out.stderr and "not served as an experiment" in out.stderr
    assert out.returncode == 2 and "is unreachable" in out.stderr, out.stderr  # the store, not the clash


def test_gateway_with_a_clashing_config_experiment_serves_the_adapter(dirs, db_url: str, caplog) -> None:
    experiments = [{"name": "bot", "variants": {"other@v1": 1}}, {"name": "bot-ab", "variants": {"other@v1": 1}}]
    with (
        engine() as eng,
        GatewayThread(
            gateway_app(dirs, [eng.url], experiments=experiments, **{"store.url": db_url}), free_port()
        ) as gw,
    ):
        resp = chat(gw.url, "bot")
        assert resp.status_code == 200 and resp.headers["x-loraplane-adapter"] == "bot@v1"
        assert chat(gw.url, "bot-ab").headers["x-loraplane-adapter"] == "other@v1"  # the other one is seeded
    assert "config experiment 'bot' is not served: experiment name 'bot' clashes with adapter 'bot'" in caplog.text


def test_feedback_right_after_a_stream_ends(dirs, tmp_path: Path) -> None:
    overrides = {"store.url": f"sqlite:///{tmp_path / 'lp.db'}", "store.log_flush_interval_s": 60.0}
    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **overrides), free_port()) as gw:
        for _ in range(5):
            with httpx.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json={"model": "bot", "messages": MSG, "stream": True},
                timeout=30,
            ) as resp:
                lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            rid = httpx.Response(200, content=lines[0][6:]).json()["id"]
            resp = httpx.post(f"{gw.url}/v1/feedback", json={"id": rid, "score": 1}, timeout=10)
            assert resp.status_code == 200, resp.text  # the record was queued before [DONE] went out


def test_the_openai_client_ids_are_the_logged_ids(dirs, db_url: str) -> None:
    import openai

    with engine() as eng, GatewayThread(gateway_app(dirs, [eng.url], **{"store.url": db_url}), free_port()) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        plain = client.chat.completions.create(model="bot", messages=MSG, max_tokens=4)
        chunks = list(client.chat.completions.create(model="bot@v1", messages=MSG, max_tokens=4, stream=True))
        for rid in (plain.id, chunks[0].id):
            resp = httpx.post(f"{gw.url}/v1/feedback", json={"id": rid, "score": 1}, timeout=10)
            assert resp.status_code == 200 and resp.json()["variant"] == "bot@v1", resp.text
    assert set(open_store(db_url).get_requests([plain.id, chunks[0].id])) == {plain.id, chunks[0].id}
