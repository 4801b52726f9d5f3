"""Two real gateway processes (`loraplane serve --gateway-only`) sharing one real PostgreSQL, in
front of a fake engine process: a change made through one replica is served by the other within
2 s, and a gateway killed with SIGKILL mid-traffic comes back with everything committed intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.serving.conftest import new_postgres_database
from tests.serving.test_registry import make_adapter

BASE = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.slow  # starts four processes


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code in (200, 503):
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], health: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(health, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def setup(tmp_path: Path, postgres_server_url: str):
    models, adapters = tmp_path / "models", tmp_path / "adapters"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "loraplane-base.json").write_text(json.dumps({"name": BASE, "weights_sha256": "a" * 64}))
    (models / BASE / "config.json").write_text("{}")  # `loraplane serve` checks the base directory
    for version in ("v1", "v2"):
        make_adapter(adapters, "bot", version)
    config = tmp_path / "serving.yaml"
    url = new_postgres_database(postgres_server_url)
    config.write_text(
        f"registry:\n  models_dir: {models}\n  adapters_dir: {adapters}\nstore:\n  url: '{url}'\n"
        "  log_flush_interval_s: 0.05\nauth:\n  local_dev_open_admin: true\n"  # loopback gateways
    )
    return config, tmp_path


def gateway(config: Path, engine_url: str, port: int, log: Path):
    args = ["loraplane", "serve", "--config", str(config), "--gateway-only", "--engine-url", engine_url]
    return process([*args, "--port", str(port)], f"http://127.0.0.1:{port}/health", log)


def adapter_of(url: str, model: str) -> str:
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": MSG}, timeout=10)
    return resp.headers.get("x-loraplane-adapter", f"HTTP {resp.status_code}")


def seconds_until(predicate, timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("not seen in time")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_change_through_one_replica_reaches_the_other_within_2_s(setup) -> None:
    config, tmp = setup
    eport, pa, pb = free_port(), free_port(), free_port()
    with (
        process(["fakes.engine", "--port", str(eport)], f"http://127.0.0.1:{eport}/health", tmp / "engine.log"),
        gateway(config, f"http://127.0.0.1:{eport}", pa, tmp / "a.log"),
        gateway(config, f"http://127.0.0.1:{eport}", pb, tmp / "b.log"),
    ):
        a, b = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
        assert adapter_of(a, "bot") == adapter_of(b, "bot") == "bot@v1"
        assert httpx.post(f"{a}/admin/adapters/bot/v2/promote", json={}).status_code == 200
        assert seconds_until(lambda: adapter_of(b, "bot") == "bot@v2") <= 2.0
        resp = httpx.put(f"{b}/admin/experiments/ab", json={"variants": {"bot@v1": 1}})
        assert resp.status_code == 200
        assert seconds_until(lambda: adapter_of(a, "ab") == "bot@v1") <= 2.0


def test_kill_9_mid_traffic_loses_nothing_committed(setup) -> None:
    config, tmp = setup
    eport, pa = free_port(), free_port()
    engine_url = f"http://127.0.0.1:{eport}"
    a = f"http://127.0.0.1:{pa}"
    rated: dict[str, float] = {}  # response id -> score the gateway acknowledged
    with process(["fakes.engine", "--port", str(eport)], f"{engine_url}/health", tmp / "engine.log"):
        with gateway(config, engine_url, pa, tmp / "a1.log") as proc:
            assert (
                httpx.put(f"{a}/admin/experiments/ab", json={"variants": {"bot@v1": 3, "bot@v2": 1}}).status_code == 200
            )
            assert httpx.post(f"{a}/admin/adapters/bot/v2/promote", json={"reason": "eval"}).status_code == 200
            stop = threading.Event()

            def traffic() -> None:
                with httpx.Client(base_url=a, timeout=5) as client:
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        try:
                            rid = client.post("/v1/chat/completions", json={"model": "ab", "messages": MSG}).json()[
                                "id"
                            ]
                            resp = client.post("/v1/feedback", json={"id": rid, "score": i % 2})
                        except (httpx.HTTPError, KeyError, ValueError):
                            return  # the gateway died
                        if resp.status_code == 200:
                            rated[rid] = float(i % 2)

            worker = threading.Thread(target=traffic)
            worker.start()
            time.sleep(2.0)
            os.kill(proc.pid, signal.SIGKILL)
            worker.join(10)
            stop.set()
        assert len(rated) >= 5
        with gateway(config, engine_url, pa, tmp / "a2.log"):
            experiments = httpx.get(f"{a}/admin/experiments").json()["data"]
            assert experiments == [{"name": "ab", "variants": {"bot@v1": 3, "bot@v2": 1}, "capture": "none"}]
            assert adapter_of(a, "bot") == "bot@v2"
            audit = httpx.get(f"{a}/admin/audit").json()["data"]
            assert [x["action"] for x in audit] == ["stable.init", "experiment.put", "stable.set"]
            # every acknowledged score is there: rating again replaces it, so read them back via the store
            from serving.store import Store
            from serving.store.connect import create_db_engine

            url = config.read_text().split("url: '")[1].split("'")[0]
            store = Store(create_db_engine(url))
            stored = {f.response_id: f.score for f in store.feedback()}
            store.close()
    assert {rid: stored.get(rid) for rid in rated} == rated
