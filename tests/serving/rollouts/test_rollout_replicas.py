"""Two gateway processes on one real PostgreSQL (fake engine): exactly one evaluator decides; when
it is killed with -9 the other takes over within its lease; the killed one restarts with the
rollout, its weights and its audit log intact; a rollback reaches both replicas."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fakes.servers import wait_for
from tests.conftest import free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import chat, engine
from tests.serving.test_registry import make_adapter

dirs = faults.dirs
LEASE_S = 2.0
TICK_S = 0.2


class GatewayProcess:
    """`loraplane serve --gateway-only` in its own process (so it can be killed with -9)."""

    def __init__(self, config: Path, engine_url: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "loraplane", "serve", "--config", str(config), "--gateway-only"]
        argv += ["--engine-url", engine_url, "--port", str(self.port)]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway did not start; see {log}")

    def evaluator(self, rollout: str) -> dict:
        return httpx.get(f"{self.url}/admin/rollouts/{rollout}", timeout=10).json()["evaluator"]

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown, no lease release
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture
def config(dirs, tmp_path: Path, postgres_server_url: str) -> Path:
    from tests.serving.conftest import new_postgres_database

    make_adapter(dirs[1], "bot", "v2")
    # `serve` checks for a config.json even with no local engine (serving/engines/process.py local_engines)
    (dirs[0] / faults.BASE / "config.json").write_text("{}")
    cfg = {
        "registry": {"models_dir": str(dirs[0]), "adapters_dir": str(dirs[1])},
        "store": {"url": new_postgres_database(postgres_server_url), "poll_interval_s": 0.2},
        "rollouts": {"tick_s": TICK_S, "lease_s": LEASE_S},
        "auth": {"local_dev_open_admin": True},  # loopback gateways: admin calls need no key
    }
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def leaders(gws: list[GatewayProcess]) -> list[bool]:
    return [gw.evaluator("r")["leader"] for gw in gws]


def test_one_evaluator_takes_over_within_its_lease_after_kill_9(config: Path, tmp_path: Path) -> None:
    with engine(tokens=1, ttft_ms=1.0, itl_ms=0.0) as eng:
        gws = [GatewayProcess(config, eng.url, tmp_path / f"gw{i}.log") for i in range(2)]
        try:
            body = {"candidate": "bot@v2", "steps": [50, 100], "min_samples": 100_000, "interval_s": 0.3}
            assert httpx.post(f"{gws[0].url}/admin/rollouts/r", json=body, timeout=10).status_code == 201
            assert sorted(wait_for(lambda: any(x := leaders(gws)) and x)) == [False, True]
            first = gws[leaders(gws).index(True)]
            other = gws[1 - gws.index(first)]
            holder = first.evaluator("r")["holder"]
            holds = wait_for(lambda: len(h := _holds(other.url)) >= 3 and h)
            assert {a["actor"] for a in holds} == {f"evaluator:{holder}"}  # exactly one evaluator decided
            weights = httpx.get(f"{other.url}/admin/rollouts/r").json()["weights"]
            first.kill9()
            killed_at = time.monotonic()
            wait_for(lambda: other.evaluator("r")["leader"], timeout_s=LEASE_S * 5)
            takeover_s = time.monotonic() - killed_at
            new_holder = other.evaluator("r")["holder"]
            wait_for(lambda: any(a["actor"] == f"evaluator:{new_holder}" for a in _holds(other.url)))
            restarted = GatewayProcess(config, eng.url, tmp_path / "gw-restarted.log")
            gws.append(restarted)
            after = httpx.get(f"{restarted.url}/admin/rollouts/r").json()
            audit = httpx.get(f"{restarted.url}/admin/audit", params={"subject": "r"}).json()["data"]
        finally:
            for gw in gws:
                gw.stop()
    assert takeover_s <= LEASE_S + 4 * TICK_S + 1.0, takeover_s  # lapse + a tick + polling slack
    assert after["state"] == "running" and after["weights"] == weights == {"bot@v2": 50, "bot@v1": 50}
    assert audit[0]["action"] == "rollout.start" and len(audit) >= len(holds) + 1


def _holds(url: str) -> list[dict]:
    audit = httpx.get(f"{url}/admin/audit", params={"subject": "r"}, timeout=10).json()["data"]
    return [a for a in audit if a["action"] == "rollout.hold"]


def test_a_rollback_reaches_every_replica(config: Path, tmp_path: Path) -> None:
    settings = {"tokens": 1, "ttft_ms": 1.0, "itl_ms": 0.0, "error_rate": 0.0}
    with engine(**settings) as eng:
        gws = [GatewayProcess(config, eng.url, tmp_path / f"gw{i}.log") for i in range(2)]
        try:
            body = {"candidate": "bot@v2", "steps": [50, 100], "min_samples": 100_000, "interval_s": 0.3}
            assert httpx.post(f"{gws[0].url}/admin/rollouts/r", json=body, timeout=10).status_code == 201
            seen = [{chat(gw.url, "bot", user=f"u{i}").headers["x-loraplane-adapter"] for i in range(30)} for gw in gws]
            assert httpx.post(f"{gws[1].url}/admin/rollouts/r/rollback", json={"reason": "test"}).status_code == 200
            wait_for(
                lambda: all(chat(gw.url, "bot", user="u1").headers["x-loraplane-adapter"] == "bot@v1" for gw in gws), 5
            )
            after = [
                {chat(gw.url, "bot", user=f"u{i}").headers["x-loraplane-adapter"] for i in range(30)} for gw in gws
            ]
        finally:
            for gw in gws:
                gw.stop()
    assert seen == [{"bot@v1", "bot@v2"}] * 2  # both replicas split by the same weights
    assert after == [{"bot@v1"}] * 2
