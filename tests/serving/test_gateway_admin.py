"""The admin API and variant pinning over HTTP: closed unless an admin key (or, on loopback, the
local-development switch) opens them."""

from __future__ import annotations

import httpx

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import MSG, chat, dirs, engine, gateway_app  # noqa: F401

EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}


def test_admin_api_closed_without_admin_key(dirs) -> None:  # noqa: F811
    with engine() as e0, GatewayThread(gateway_app(dirs, [e0.url]), free_port()) as gw:
        for method, path in (("GET", "/admin/adapters"), ("POST", "/admin/adapters/bot/v1/load")):
            resp = httpx.request(method, f"{gw.url}{path}", headers={"Authorization": "Bearer guess"})
            assert resp.status_code == 403
            assert "auth.admin_key_sha256" in resp.json()["error"]["message"]
        assert not gw.state.pool.engines[0].loaded  # nothing reached the engine


def test_admin_key_opens_admin_api_with_auth_off(dirs) -> None:  # noqa: F811
    with (
        engine() as e0,
        GatewayThread(gateway_app(dirs, [e0.url], **{"auth.admin_key_sha256": hash_key("adm")}), free_port()) as gw,
    ):
        assert httpx.get(f"{gw.url}/admin/adapters").status_code == 401
        ok = httpx.post(f"{gw.url}/admin/adapters/bot/v1/load", headers={"Authorization": "Bearer adm"}, json={})
        assert ok.status_code == 200 and ok.json()["loaded_on"] == [0]


def test_local_dev_switch_opens_admin_on_loopback(dirs) -> None:  # noqa: F811
    with (
        engine() as e0,
        GatewayThread(gateway_app(dirs, [e0.url], **{"auth.local_dev_open_admin": True}), free_port()) as gw,
    ):
        assert httpx.get(f"{gw.url}/admin/adapters").status_code == 200
        # What a page on any site can send without a CORS preflight: a form post, a bodiless or
        # text/plain fetch. None of them may act on the open admin API.
        load = f"{gw.url}/admin/adapters/bot/v1/load"
        for simple in (
            {},
            {"data": {"reason": "x"}},  # application/x-www-form-urlencoded
            {"content": b'{"reason": "x"}', "headers": {"Content-Type": "text/plain"}},
            {"files": {"f": b"x"}},  # multipart/form-data
        ):
            refused = httpx.post(load, **simple)
            error = refused.json()["error"]
            assert refused.status_code == 400 and error["param"] == "Content-Type", refused.text
            assert "application/json" in error["message"]
        start = httpx.post(f"{gw.url}/admin/rollouts/r", content=b'{"candidate": "bot@v1"}')
        assert start.status_code == 400 and "no Content-Type" in start.json()["error"]["message"]
        assert not gw.state.pool.engines[0].loaded  # nothing reached the engine
        assert httpx.post(load, json={}).json()["loaded_on"] == [0]


def test_variant_pinning_needs_permission(dirs) -> None:  # noqa: F811
    auth = {
        "auth.enabled": True,
        "auth.admin_key_sha256": hash_key("adm"),
        "auth.keys": [
            {"name": "app", "sha256": hash_key("k-app")},
            {"name": "qa", "sha256": hash_key("k-qa"), "may_pin_variant": True},
        ],
        **EXPERIMENT,
    }
    with engine() as e0, GatewayThread(gateway_app(dirs, [e0.url], **auth), free_port()) as gw:

        def pin(key: str) -> httpx.Response:
            return chat(gw.url, "ab", headers={"Authorization": f"Bearer {key}", "X-Loraplane-Variant": "other@v1"})

        refused = pin("k-app")
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "X-Loraplane-Variant"
        pinned = pin("k-qa")
        assert pinned.status_code == 200 and pinned.headers["x-loraplane-variant"] == "other@v1"


def test_admin_key_pins_with_auth_off(dirs) -> None:  # noqa: F811
    cfg = {"auth.admin_key_sha256": hash_key("adm"), **EXPERIMENT}
    with engine() as e0, GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw:
        assert chat(gw.url, "ab", headers={"X-Loraplane-Variant": "other@v1"}).status_code == 403
        pinned = chat(gw.url, "ab", headers={"Authorization": "Bearer adm", "X-Loraplane-Variant": "other@v1"})
        assert pinned.status_code == 200 and pinned.headers["x-loraplane-variant"] == "other@v1"
