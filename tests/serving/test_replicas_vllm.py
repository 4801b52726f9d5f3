"""Two real vLLM CPU engines behind one gateway; one is killed (-9) during load.

Requests keep succeeding on the survivor; a stream cut by the kill ends with an error event
(never a hang or a 500); the supervisor restarts the dead engine and the gateway re-loads
the adapters it held.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.cli import supervise
from serving.engines.process import EngineProcess
from serving.gateway.app import create_app
from tests.conftest import BASE_NAME, GatewayThread, free_port

pytestmark = pytest.mark.slow


def stream_once(url: str, model: str) -> str:
    """'ok', 'error-event' (stream ended with the gateway's error event) or 'http-<status>'."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count to twenty."}],
        "max_tokens": 24,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        if resp.status_code != 200:
            resp.read()
            return f"http-{resp.status_code}"
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    if any('"error"' in e for e in events):
        return "error-event"
    return "ok" if events and events[-1] == "[DONE]" else "truncated"


@pytest.fixture(scope="module")
def second_engine(serving_config, base_dir, tmp_path_factory):
    cfg = serving_config.model_copy(deep=True)
    cfg.engine.port = free_port()
    proc = EngineProcess(cfg, base_dir, BASE_NAME, 0, tmp_path_factory.mktemp("engine-b"))
    with proc.running(600):
        yield proc


def test_kill_one_engine_during_load(serving_config, engine, second_engine, gateway) -> None:
    adapter = f"{gateway.adapter}@v1"
    app = create_app(serving_config, [second_engine.url, engine.url], health_interval_s=0.5)
    with GatewayThread(app, free_port()) as gw:
        pool = gw.state.pool
        assert stream_once(gw.url, adapter) == "ok"
        victim = next(e for e in pool.engines if adapter in e.loaded)
        victim_proc = second_engine if victim.url == second_engine.url else engine
        if victim_proc is engine:  # keep the session engine alive: move the adapter to engine B
            pool.engines[1].healthy = False
            assert stream_once(gw.url, adapter) == "ok"
            pool.engines[1].healthy = True
        assert adapter in pool.engines[0].loaded

        outcomes: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                outcomes.append(stream_once(gw.url, adapter))

        with ThreadPoolExecutor(4) as workers:
            for _ in range(4):
                workers.submit(load)
            time.sleep(3)
            killed_at = len(outcomes)
            os.killpg(os.getpgid(second_engine.proc.pid), signal.SIGKILL)
            time.sleep(12)
            stop.set()
        after_kill = outcomes[killed_at + 4 :]  # the 4 in flight at the kill may be cut
        assert after_kill and set(after_kill) == {"ok"}, outcomes
        assert set(outcomes) <= {"ok", "error-event"}, outcomes
        assert not pool.engines[0].healthy and pool.engines[1].healthy

        # The supervisor restarts the dead engine; the gateway re-loads its adapters when it is back.
        halt = threading.Event()
        threading.Thread(target=supervise, args=([second_engine], halt), daemon=True).start()
        try:
            deadline = time.monotonic() + 600
            # _recover() empties `loaded` and marks the engine healthy, then loads the adapters again
            while time.monotonic() < deadline and not (pool.engines[0].healthy and adapter in pool.engines[0].loaded):
                time.sleep(1)
            assert pool.engines[0].healthy and second_engine.restarts == 1
            served = httpx.get(f"{second_engine.url}/v1/models", timeout=10).json()["data"]
            assert adapter in {m["id"] for m in served}  # re-loaded into the restarted engine
            assert json.loads(httpx.get(f"{gw.url}/health").text)["status"] == "ok"
        finally:
            halt.set()
