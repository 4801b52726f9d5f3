"""Every response is counted in loraplane_requests_total, refusals before forwarding included."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, chat, dirs, engine, gateway_app  # noqa: F401


def request_counts(url: str) -> dict[tuple[str, str, str, str], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.labels["route"], s.labels["model"], s.labels["variant"], s.labels["status_class"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "loraplane_requests_total"
    }


def test_refusals_are_counted(dirs) -> None:  # noqa: F811
    cfg = {
        "auth.enabled": True,
        "auth.admin_key_sha256": hash_key("adm"),
        "auth.keys": [
            {"name": "app", "sha256": hash_key("k1"), "models": ["bot", BASE], "rate_limit_per_minute": 2},
            {"name": "free", "sha256": hash_key("k2")},
        ],
        "gateway.max_body_bytes": 2048,
    }
    k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    with engine(fail_load=("other@v1",)) as e0, GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw:
        assert chat(gw.url, "bot").status_code == 401  # before the body is read: model unknown
        assert chat(gw.url, "third", headers=k1).status_code == 403
        assert chat(gw.url, "no-such-model", headers=k2).status_code == 404
        assert chat(gw.url, "bot", headers=k1, messages=[{"role": "wizard", "content": "x"}]).status_code == 400
        big = {"model": "bot", "messages": [{"role": "user", "content": "x" * 4096}]}
        assert httpx.post(f"{gw.url}/v1/chat/completions", json=big, headers=k1).status_code == 413
        assert chat(gw.url, "other", headers=k2).status_code == 422
        assert [chat(gw.url, "bot", headers=k1).status_code for _ in range(3)] == [200, 200, 429]
        assert httpx.get(f"{gw.url}/admin/adapters").status_code == 401
        assert httpx.get(f"{gw.url}/v1/nothing-here").status_code == 404
        counts = request_counts(gw.url)
    assert counts == {
        ("chat", "unknown", "none", "4xx"): 3.0,  # 401 (no key), 404 (unknown name), 413 (body not read)
        ("chat", "third", "none", "4xx"): 1.0,
        ("chat", "bot", "none", "4xx"): 2.0,  # 400 wizard, 429
        ("chat", "other", "other@v1", "4xx"): 1.0,  # 422: the chosen version failed to load
        ("chat", "bot", "bot@v1", "2xx"): 2.0,
        ("admin", "unknown", "none", "4xx"): 1.0,
        ("other", "unknown", "none", "4xx"): 1.0,
    }


def test_engine_unavailable_counted_once(dirs) -> None:  # noqa: F811
    with GatewayThread(gateway_app(dirs, [f"http://127.0.0.1:{free_port()}"]), free_port()) as gw:
        assert chat(gw.url).status_code == 503
        assert request_counts(gw.url) == {("chat", BASE, "none", "5xx"): 1.0}
