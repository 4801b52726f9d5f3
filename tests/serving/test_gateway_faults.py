"""Gateway behaviour under faults, against fake engines that speak vLLM's HTTP interface.

Fakes are for what a real engine cannot be made to do on cue: answer 500, die mid-stream,
be unreachable. Everything here runs in seconds.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from serving.config import load_config
from serving.gateway.app import create_app
from serving.gateway.auth import hash_key
from serving.gateway.pool import Engine
from tests.conftest import GatewayThread, free_port
from tests.serving.test_registry import make_adapter

BASE = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    models, adapters = tmp_path / "models", tmp_path / "adapters"
    (models / BASE).mkdir(parents=True)
    (models / BASE / "loraplane-base.json").write_text(json.dumps({"name": BASE, "weights_sha256": "a" * 64}))
    for name in ("bot", "other", "third"):
        make_adapter(adapters, name, "v1")
    return models, adapters


def gateway_app(dirs: tuple[Path, Path], urls: list[str], **overrides):
    models, adapters = dirs
    cfg = load_config(None, {"registry.models_dir": str(models), "registry.adapters_dir": str(adapters), **overrides})
    return create_app(cfg, urls, health_interval_s=0.2)


def engine(**settings) -> GatewayThread:  # any ASGI app in a uvicorn thread
    return GatewayThread(mock_engine_app(MockSettings(**settings)), free_port())


def dying_engine() -> GatewayThread:
    """Streams two chunks, then the connection breaks (the engine process died)."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        async def body():
            for word in ("one", "two"):
                chunk = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": BASE,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0.05)
            raise RuntimeError("engine died")

        return StreamingResponse(body(), media_type="text/event-stream")

    return GatewayThread(app, free_port())


def chat(url: str, model: str = BASE, **extra) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MSG, **extra},
        timeout=30,
        headers=extra.pop("headers", None),
    )


def test_no_engine_reachable_is_503(dirs) -> None:
    with GatewayThread(gateway_app(dirs, [f"http://127.0.0.1:{free_port()}"]), free_port()) as gw:
        resp = chat(gw.url)
        assert resp.status_code == 503
        assert "engine is unavailable" in resp.json()["error"]["message"]
        assert httpx.get(f"{gw.url}/health").status_code == 503


def test_retries_on_another_engine_before_first_byte(dirs) -> None:
    app = gateway_app(dirs, [], **{"gateway.read_timeout_s": 0.5})
    with engine(ttft_ms=3000) as stalled, engine() as good, GatewayThread(app, free_port()) as gw:
        gw.state.pool.engines = [Engine(0, stalled.url), Engine(1, good.url)]
        for _ in range(2):
            resp = chat(gw.url, "bot@v1")
            assert resp.status_code == 200 and resp.headers["x-loraplane-engine"] == "1"
        # one retry: after its timeout the stalled engine stays out (cooldown) although its /health is fine
        assert "loraplane_upstream_retries_total 1.0" in httpx.get(f"{gw.url}/metrics").text


def test_engine_death_mid_stream_ends_with_error_event(dirs) -> None:
    with dying_engine() as dying, GatewayThread(gateway_app(dirs, [dying.url]), free_port()) as gw:
        with httpx.stream(
            "POST", f"{gw.url}/v1/chat/completions", timeout=30, json={"model": BASE, "messages": MSG, "stream": True}
        ) as resp:
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "one"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "engine_unavailable" and events[-1] == "[DONE]"
        assert chat(gw.url).status_code == 503  # marked down: the next request is not sent to it


def test_burst_beyond_capacity_gets_429_never_5xx(dirs) -> None:
    with engine(ttft_ms=400) as slow:
        app = gateway_app(dirs, [slow.url], **{"gateway.max_in_flight": 2})
        with GatewayThread(app, free_port()) as gw, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: chat(gw.url), range(8)))
        codes = sorted(r.status_code for r in statuses)
        assert set(codes) == {200, 429} and codes.count(200) >= 2
        limited = next(r for r in statuses if r.status_code == 429)
        assert limited.headers["retry-after"] == "1"


def test_affinity_and_lru_unload(dirs) -> None:
    with engine() as e0, engine() as e1:
        app = gateway_app(dirs, [e0.url, e1.url], **{"engine.max_cpu_loras": 2, "engine.max_loras": 2})
        with GatewayThread(app, free_port()) as gw:
            pool = gw.state.pool
            first = chat(gw.url, "bot").headers["x-loraplane-engine"]
            assert all(chat(gw.url, "bot").headers["x-loraplane-engine"] == first for _ in range(3))
            holder = pool.engines[int(first)]
            holder.loaded.setdefault("other@v1", next(iter(holder.loaded.values())))  # fill to capacity
            pool.engines[1 - int(first)].healthy = False  # force the next adapter onto the holder
            assert chat(gw.url, "third").status_code == 200
            assert list(holder.loaded) == ["other@v1", "third@v1"]  # bot@v1 was least recently used


def test_keys_allow_lists_and_rate_limits(dirs) -> None:
    auth = {
        "auth.enabled": True,
        "auth.admin_key_sha256": hash_key("admin"),
        "auth.keys": [{"name": "app", "sha256": hash_key("k1"), "models": ["bot"], "rate_limit_per_minute": 2}],
    }
    with engine() as e0, GatewayThread(gateway_app(dirs, [e0.url], **auth), free_port()) as gw:
        assert chat(gw.url, "bot").status_code == 401
        key = {"Authorization": "Bearer k1"}
        assert chat(gw.url, "other", headers=key).status_code == 403
        assert chat(gw.url, "bot", headers=key).status_code == 200
        assert chat(gw.url, "bot@v1", headers=key).status_code == 200
        limited = chat(gw.url, "bot", headers=key)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        assert httpx.get(f"{gw.url}/admin/adapters", headers=key).status_code == 401
        assert httpx.get(f"{gw.url}/admin/adapters", headers={"Authorization": "Bearer admin"}).status_code == 200
        models = httpx.get(f"{gw.url}/v1/models", headers=key).json()["data"]
        assert {m["id"] for m in models} == {"bot", "bot@v1"}
