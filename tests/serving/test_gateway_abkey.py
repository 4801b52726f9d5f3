"""A/B keys (serving/gateway/abkey.py): configured source order, no client-address fallback,
unkeyed requests counted."""

from __future__ import annotations

from collections import Counter

import httpx

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import chat, dirs, engine, gateway_app  # noqa: F401

EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}


def variants(url: str, n: int, **extra) -> Counter:
    return Counter(chat(url, "ab", **extra).headers["x-loraplane-variant"] for _ in range(n))


def test_unkeyed_requests_split_and_are_counted(dirs) -> None:  # noqa: F811
    with engine(ttft_ms=0, itl_ms=0) as e0, GatewayThread(gateway_app(dirs, [e0.url], **EXPERIMENT), free_port()) as gw:
        seen = variants(gw.url, 40)  # one client address: it used to be one key, a 100/0 split
        assert set(seen) == {"bot@v1", "other@v1"}
        assert chat(gw.url, "bot").status_code == 200  # not an experiment: no key needed, not counted
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'loraplane_unkeyed_requests_total{route="chat"} 40.0' in metrics


def test_key_sources_follow_the_configured_order(dirs) -> None:  # noqa: F811
    cfg = {
        **EXPERIMENT,
        "gateway.ab_key_sources": ["api_key", "user"],
        "auth.enabled": True,
        "auth.keys": [{"name": "app", "sha256": hash_key("k1")}],
    }
    with engine(ttft_ms=0, itl_ms=0) as e0, GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw:
        key = {"Authorization": "Bearer k1"}
        # the key comes first: 20 different users behind one key all get the key's variant
        by_key = Counter(
            chat(gw.url, "ab", user=f"u{i}", headers=key).headers["x-loraplane-variant"] for i in range(20)
        )
        assert len(by_key) == 1
        assert "loraplane_unkeyed_requests_total{" not in httpx.get(f"{gw.url}/metrics").text  # all keyed


def test_header_only_ignores_user_field(dirs) -> None:  # noqa: F811
    cfg = {**EXPERIMENT, "gateway.ab_key_sources": ["header"]}
    with engine(ttft_ms=0, itl_ms=0) as e0, GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw:
        sticky = Counter(
            chat(gw.url, "ab", user=f"u{i}", headers={"X-User-Id": "alice"}).headers["x-loraplane-variant"]
            for i in range(20)
        )
        assert len(sticky) == 1
