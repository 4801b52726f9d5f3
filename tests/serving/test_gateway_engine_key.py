"""With LORAPLANE_ENGINE_API_KEY the engines refuse every /v1 call without it, and the gateway
sends it on each engine call (proxy, adapter load/unload)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, MSG, chat, dirs, gateway_app  # noqa: F401

KEY = "engine-secret"


def through_gateway(dirs, engine_url: str) -> None:  # noqa: F811
    app = gateway_app(dirs, [engine_url], **{"auth.local_dev_open_admin": True})
    with GatewayThread(app, free_port()) as gw:
        assert chat(gw.url).status_code == 200
        assert chat(gw.url, "bot", stream=True).status_code == 200  # adapter load + stream
        assert httpx.post(f"{gw.url}/admin/adapters/bot/v1/unload", json={}).json()["unloaded_from"] == 1
        assert gw.state.pool.engines[0].healthy


def refused_without_key(engine_url: str) -> None:
    direct = {"model": BASE, "messages": MSG}
    assert httpx.post(f"{engine_url}/v1/chat/completions", json=direct).status_code == 401
    load = {"lora_name": "x", "lora_path": "/etc"}
    assert httpx.post(f"{engine_url}/v1/load_lora_adapter", json=load).status_code == 401
    wrong = httpx.post(f"{engine_url}/v1/chat/completions", json=direct, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_engine_key_on_every_engine_call(dirs, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("LORAPLANE_ENGINE_API_KEY", KEY)
    with GatewayThread(mock_engine_app(MockSettings(api_key=KEY)), free_port()) as e0:
        refused_without_key(e0.url)
        through_gateway(dirs, e0.url)
        assert e0.app.state.engine.refused == 3  # only the direct calls above


def test_gateway_without_the_key_is_told_what_to_set(dirs, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("LORAPLANE_ENGINE_API_KEY", raising=False)
    with (
        GatewayThread(mock_engine_app(MockSettings(api_key=KEY)), free_port()) as e0,
        GatewayThread(gateway_app(dirs, [e0.url]), free_port()) as gw,
    ):
        resp = chat(gw.url)
        assert resp.status_code == 502 and "LORAPLANE_ENGINE_API_KEY" in resp.json()["error"]["message"]


@pytest.mark.slow
def test_engine_key_with_vllms_own_middleware(dirs, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same, with vLLM's own --api-key check (its ASGI middleware) in front of the fake engine."""
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    engine: FastAPI = mock_engine_app(MockSettings())
    engine.add_middleware(AuthenticationMiddleware, tokens=[KEY])
    monkeypatch.setenv("LORAPLANE_ENGINE_API_KEY", KEY)
    with GatewayThread(engine, free_port()) as e0:
        refused_without_key(e0.url)
        through_gateway(dirs, e0.url)
