"""LRU eviction against the real vLLM engine: more adapters than engine.max_cpu_loras.

Uses the session engine and gateway (tests/conftest.py, max_cpu_loras 4). The least recently used
adapter must really leave vLLM (its own /v1/models stops listing it), and come back on its next
request. The extra adapters are copies of the session's trained v1 under other names, removed after.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.conftest import ADMIN

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Say hi."}]


def loras_in_vllm(engine_url: str) -> set[str]:
    """The LoRA adapters the engine itself reports as loaded (ids with '@'; the base has none)."""
    data = httpx.get(f"{engine_url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in data if "@" in m["id"]}


def ask(gateway_url: str, model: str) -> None:
    body = {"model": model, "messages": QUESTION, "max_tokens": 1, "temperature": 0}
    resp = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-loraplane-adapter"] == model


def test_least_recently_used_adapter_is_unloaded_from_vllm_and_reloaded(gateway, adapters_dir, serving_config):
    limit = serving_config.engine.max_cpu_loras
    names = [f"lru-{i}" for i in range(limit + 1)]
    keys = [f"{name}@v1" for name in names]
    for name in names:
        shutil.copytree(adapters_dir / gateway.adapter / "v1", adapters_dir / name / "v1")
    state = gateway.server.state
    deadline = time.monotonic() + 15  # published versions are served after the registry's next poll
    while not all(state.registry.has(name) for name in names) and time.monotonic() < deadline:
        time.sleep(0.2)
    loads = state.metrics.adapter_loads
    try:
        for key in keys:
            ask(gateway.url, key)
        resident = loras_in_vllm(gateway.engine.url)
        assert keys[0] not in resident, f"{keys[0]} should have been evicted from vLLM: {sorted(resident)}"
        assert set(keys[1:]) <= resident and len(resident) <= limit
        assert list(state.pool.engines[0].loaded) == keys[1:]  # the gateway's LRU order agrees
        assert loads.labels(keys[0], "ok")._value.get() == 1

        ask(gateway.url, keys[0])  # its next request loads it again, evicting the next oldest
        resident = loras_in_vllm(gateway.engine.url)
        assert keys[0] in resident and keys[1] not in resident
        assert loads.labels(keys[0], "ok")._value.get() == 2
    finally:
        for key in keys:
            name, version = key.split("@")
            httpx.post(f"{gateway.url}/admin/adapters/{name}/{version}/unload", headers=ADMIN, json={}, timeout=30)
        for name in names:
            shutil.rmtree(adapters_dir / name, ignore_errors=True)
