"""`loraplane serve`'s local engines are closed to other local processes by default: with no
LORAPLANE_ENGINE_API_KEY set, serve makes a random key for the run, vLLM gets it as its API key and
runs loraplane_vllm.engine_key_guard on every other path (vLLM's own key check leaves POST /adapters,
which loads an adapter from any path, open), and only the gateway holds it.

One real vLLM engine started the way `serve` starts it (serving.cli.start_engines).
"""

from __future__ import annotations

import os

import httpx
import pytest

from fakes.servers import free_port
from serving.cli import start_engines
from serving.engines.process import ENGINE_KEY_ENV
from serving.gateway.app import create_app
from tests.conftest import ADAPTER, GatewayThread

pytestmark = pytest.mark.slow


def test_serve_engines_refuse_every_caller_but_the_gateway(serving_config, adapters_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENGINE_KEY_ENV, "recorded-so-teardown-restores-it")
    monkeypatch.delenv(ENGINE_KEY_ENV)
    cfg = serving_config.model_copy(deep=True)
    cfg.engine.port, cfg.gateway.port = free_port(), free_port()
    engines = start_engines(cfg, tmp_path)
    try:
        (engine,) = engines
        key = os.environ[ENGINE_KEY_ENV]
        assert len(key) >= 40
        keyed = {"Authorization": f"Bearer {key}"}
        path = str(adapters_dir / ADAPTER / "v1")
        assert httpx.get(f"{engine.url}/health", timeout=10).status_code == 200  # probes stay open
        refused = [
            httpx.post(f"{engine.url}/adapters", json={"name": "intruder", "src": path}, timeout=30),
            httpx.post(f"{engine.url}/v1/load_lora_adapter", json={"lora_name": "intruder", "lora_path": path}),
            httpx.get(f"{engine.url}/v1/models", timeout=10),
            httpx.post(
                f"{engine.url}/adapters", json={"name": "intruder", "src": path}, headers={"Authorization": "Bearer no"}
            ),
        ]
        assert [r.status_code for r in refused] == [401] * 4, [r.text for r in refused]
        assert "engine key" in refused[0].json()["error"]["message"]
        served = {m["id"] for m in httpx.get(f"{engine.url}/v1/models", headers=keyed, timeout=10).json()["data"]}
        assert "intruder" not in served  # the refused load did nothing

        with GatewayThread(create_app(cfg, [engine.url], health_interval_s=0.5), cfg.gateway.port) as gateway:
            body = {"model": f"{ADAPTER}@v1", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
            resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
            assert resp.status_code == 200, resp.text  # the gateway loaded the adapter and proxied, keyed
        served = {m["id"] for m in httpx.get(f"{engine.url}/v1/models", headers=keyed, timeout=10).json()["data"]}
        assert f"{ADAPTER}@v1" in served
    finally:
        for engine in engines:
            engine.stop()
