"""Overload sheds instead of queueing, and only engine failures take an engine out
(serving/gateway/admission.py, serving/gateway/proxy.py), against fake engines."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, MSG, chat, dirs, engine, gateway_app  # noqa: F401


def stream(url: str) -> tuple[int, float]:
    started = time.monotonic()
    body = {"model": BASE, "messages": MSG, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as resp:
        resp.read()
    return resp.status_code, time.monotonic() - started


def test_streams_count_toward_max_in_flight(dirs) -> None:  # noqa: F811
    with engine(ttft_ms=1500, tokens=4) as slow:
        app = gateway_app(dirs, [slow.url], **{"gateway.max_in_flight": 2})
        with GatewayThread(app, free_port()) as gw, ThreadPoolExecutor(8) as pool:
            codes = sorted(code for code, _ in pool.map(lambda _: stream(gw.url), range(8)))
            assert codes.count(200) == 2 and codes.count(429) == 6
            deadline = time.monotonic() + 5  # the server releases just after the client read the last byte
            while gw.state.admission.in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.state.admission.in_flight == 0  # every lease came back when its stream ended


def test_upstream_wait_has_a_timeout(dirs) -> None:  # noqa: F811
    overrides = {"gateway.max_upstream_connections": 2, "gateway.upstream_wait_timeout_s": 0.3}
    with (
        engine(ttft_ms=2000, tokens=1) as slow,
        GatewayThread(gateway_app(dirs, [slow.url], **overrides), free_port()) as gw,
        ThreadPoolExecutor(6) as pool,
    ):
        results = list(pool.map(lambda _: (time.monotonic(), chat(gw.url), time.monotonic()), range(6)))
    shed = [(r, end - start) for start, r, end in results if r.status_code == 503]
    assert sorted(r.status_code for _, r, _ in results) == [200, 200, 503, 503, 503, 503]
    for resp, waited in shed:  # answered before the engine would have answered anyone
        assert resp.headers["retry-after"] == "1" and resp.json()["error"]["code"] == "overloaded"
        assert waited < 2.0


def test_request_level_500_is_relayed_and_engine_stays_in(dirs) -> None:  # noqa: F811
    with engine(error_rate=1.0) as failing, GatewayThread(gateway_app(dirs, [failing.url]), free_port()) as gw:
        for _ in range(3):
            resp = chat(gw.url)
            assert resp.status_code == 500 and "injected fault" in resp.json()["error"]["message"]
        assert gw.state.pool.engines[0].healthy and httpx.get(f"{gw.url}/health").status_code == 200


def test_bad_adapter_load_is_422_for_that_adapter_only(dirs) -> None:  # noqa: F811
    with engine(fail_load=("bot@v1",)) as e0, GatewayThread(gateway_app(dirs, [e0.url]), free_port()) as gw:
        for _ in range(2):
            bad = chat(gw.url, "bot")
            assert bad.status_code == 422 and "bot@v1" in bad.json()["error"]["message"]
        assert chat(gw.url, "other").status_code == 200 and chat(gw.url).status_code == 200
        assert gw.state.pool.engines[0].healthy
