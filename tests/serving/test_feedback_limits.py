"""POST /v1/feedback is rate-limited per key (a bucket of its own) and admitted like a completion
(gateway.max_in_flight): one key cannot flood the store writer with scores."""

from __future__ import annotations

import threading
import time

import httpx

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread
from tests.serving.test_gateway_faults import BASE, chat, dirs, engine, gateway_app  # noqa: F401

KEY = {"Authorization": "Bearer k-app"}
AUTH = {
    "auth.enabled": True,
    "auth.keys": [{"name": "app", "sha256": hash_key("k-app"), "rate_limit_per_minute": 2}],
    "store.log_flush_interval_s": 0.05,
}


def rate(url: str, response_id: str, score: float = 1.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/feedback", json={"id": response_id, "score": score}, headers=KEY, timeout=30)


def test_feedback_has_a_per_key_rate_limit_of_its_own(dirs) -> None:  # noqa: F811
    with engine(tokens=2, ttft_ms=1, itl_ms=0) as e0, GatewayThread(gateway_app(dirs, [e0.url], **AUTH)) as gw:
        answer = chat(gw.url, headers=KEY)
        assert answer.status_code == 200
        assert [rate(gw.url, answer.json()["id"]).status_code for _ in range(2)] == [200, 200]
        limited = rate(gw.url, answer.json()["id"], 0.0)
        error = limited.json()["error"]
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert "key 'app' is over its limit of 2 feedback per minute" in error["message"]
        assert chat(gw.url, headers=KEY).status_code == 200  # completions keep their own budget


def test_feedback_is_admitted_like_a_completion(dirs) -> None:  # noqa: F811
    overrides = {"gateway.max_in_flight": 1}
    with engine(tokens=2, ttft_ms=1500, itl_ms=0) as e0, GatewayThread(gateway_app(dirs, [e0.url], **overrides)) as gw:
        slow = threading.Thread(target=chat, args=(gw.url,), kwargs={"stream": True})
        slow.start()
        deadline = time.monotonic() + 10
        while gw.state.admission.in_flight < 1:
            assert time.monotonic() < deadline, "the slow request was never admitted"
            time.sleep(0.01)
        full = httpx.post(f"{gw.url}/v1/feedback", json={"id": "chatcmpl-x", "score": 1}, timeout=30)
        assert full.status_code == 429 and "1 requests in flight" in full.json()["error"]["message"]
        slow.join(30)
        after = httpx.post(f"{gw.url}/v1/feedback", json={"id": "chatcmpl-x", "score": 1}, timeout=30)
        assert after.status_code == 404  # admitted again: an unknown id
        assert gw.state.admission.in_flight == 0  # feedback gave its place back
