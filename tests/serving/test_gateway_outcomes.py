"""Every outcome is logged and counts against the variant that was chosen; a candidate that fails
before the first byte is answered by the control (serving/gateway/{proxy,stream,recorder}.py).

The real gateway and request log (SQLite) in front of the fake engine, whose faults go through
vLLM's own HTTP interface: an adapter load that fails, a status per model, an in-stream error
event, a stream cut short, a stalled engine, a context-length 400.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from fakes.servers import wait_for
from serving.gateway.abkey import unit_of
from serving.gateway.pool import Engine
from serving.gateway.resolve import Target
from serving.store.models import RequestLogRow
from tests.conftest import GatewayThread, free_port
from tests.serving import test_gateway_faults as faults
from tests.serving.test_gateway_faults import BASE, MSG, chat, engine
from tests.serving.test_registry import make_adapter

dirs = faults.dirs  # the fixture: a base manifest and adapters bot, other, third @v1
QUICK = {"tokens": 4, "ttft_ms": 1.0, "itl_ms": 1.0}
NO_EVALUATOR = {"rollouts.evaluator": False, "auth.local_dev_open_admin": True, "store.log_flush_interval_s": 0.05}


@pytest.fixture
def two_versions(dirs):
    make_adapter(dirs[1], "bot", "v2")
    return dirs


def gateway(dirs, urls: list[str], **overrides) -> GatewayThread:
    return GatewayThread(faults.gateway_app(dirs, urls, **{**NO_EVALUATOR, **overrides}), free_port())


def start_rollout(url: str, candidate: str = "bot@v2") -> None:
    resp = httpx.post(f"{url}/admin/rollouts/r1", json={"candidate": candidate, "steps": [50, 100]}, timeout=10)
    assert resp.status_code == 201, resp.text


def logged(gw: GatewayThread, n: int | None = None) -> list[RequestLogRow]:
    """The request log's rows (at least n of them: waits for late ones), oldest first."""

    def rows() -> list[RequestLogRow]:
        gw.state.control.writer.flush().result(10)
        with Session(gw.state.store.engine) as s:
            return list(s.scalars(sa.select(RequestLogRow).order_by(RequestLogRow.created_at)))

    return wait_for(lambda: (r := rows()) and len(r) >= (n or 1) and r, timeout_s=10)


def users(url: str, n: int, **body) -> list[httpx.Response]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda i: chat(url, "bot", user=f"u{i}", **body), range(n)))


def sse(url: str, model: str, route: str = "chat", **body) -> tuple[httpx.Response, list[str]]:
    """A streamed request: the response and its `data:` payloads."""
    path, content = ("chat/completions", {"messages": MSG}) if route == "chat" else ("completions", {"prompt": "hi"})
    with httpx.stream(
        "POST", f"{url}/v1/{path}", json={"model": model, **content, "stream": True, **body}, timeout=30
    ) as resp:
        return resp, [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]


def test_a_candidate_that_cannot_load_counts_as_errors_and_the_control_answers(two_versions) -> None:
    with engine(**QUICK, fail_load=("bot@v2",)) as eng, gateway(two_versions, [eng.url]) as gw:
        start_rollout(gw.url)
        answers = users(gw.url, 40)
        rows = logged(gw, 40 + sum("x-loraplane-fallback-from" in r.headers for r in answers))
    assert [r.status_code for r in answers] == [200] * 40  # every user got an answer
    fell_back = [r for r in answers if "x-loraplane-fallback-from" in r.headers]
    assert 5 < len(fell_back) < 35  # about half the users were assigned the candidate
    assert {r.headers["x-loraplane-fallback-from"] for r in fell_back} == {"bot@v2"}
    assert {r.headers["x-loraplane-variant"] for r in answers} == {"bot@v1"}  # the variant that answered
    failures = [r for r in rows if r.variant == "bot@v2"]
    assert len(failures) == len(fell_back)
    assert {(r.status, r.outcome, r.error_kind, r.excluded) for r in failures} == {(422, "error", "load_failed", None)}
    fallbacks = [r for r in rows if r.excluded == "fallback"]
    assert len(fallbacks) == len(fell_back) and {(r.variant, r.outcome) for r in fallbacks} == {("bot@v1", "ok")}
    assert {r.id for r in fallbacks} == {r.json()["id"] for r in fell_back}  # the client got the control's id
    assigned = {unit_of(f"user:u{i}") for i, r in enumerate(answers) if "x-loraplane-fallback-from" in r.headers}
    assert {r.unit for r in failures} == assigned  # each failure is on the unit that was assigned the candidate


@pytest.mark.parametrize("stream", [False, True])
def test_a_candidate_5xx_before_the_first_byte_falls_back_to_the_control(two_versions, stream: bool) -> None:
    with engine(**QUICK, fail_status={"bot@v2": 503}) as eng, gateway(two_versions, [eng.url]) as gw:
        start_rollout(gw.url)
        answers = users(gw.url, 16, stream=stream)
        fell_back = sum("x-loraplane-fallback-from" in r.headers for r in answers)
        rows = logged(gw, 16 + fell_back)
    assert [r.status_code for r in answers] == [200] * 16 and fell_back > 0
    if stream:  # the control's stream is whole, and usage stays out as the client did not ask for it
        assert all(r.text.rstrip().endswith("data: [DONE]") and "prompt_tokens" not in r.text for r in answers)
    failures = [r for r in rows if r.variant == "bot@v2"]
    assert len(failures) == fell_back
    assert {(r.status, r.outcome, r.error_kind) for r in failures} == {(503, "error", "upstream_status")}
    assert gw.state.pool.engines[0].healthy  # an HTTP answer does not take the engine out


def test_without_a_control_the_failure_reaches_the_client_and_is_logged(dirs) -> None:
    with engine(**QUICK, fail_status={"bot@v1": 500}) as eng, gateway(dirs, [eng.url]) as gw:
        resp = chat(gw.url, "bot")
        rows = logged(gw)
    assert resp.status_code == 500 and "x-loraplane-fallback-from" not in resp.headers
    assert [(r.variant, r.status, r.outcome, r.error_kind) for r in rows] == [
        ("bot@v1", 500, "error", "upstream_status")
    ]


def test_no_engine_before_the_first_byte_is_a_logged_503(dirs) -> None:
    with gateway(dirs, [f"http://127.0.0.1:{free_port()}"]) as gw:
        resp = chat(gw.url, "bot")
        rows = logged(gw)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "engine_unavailable"
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(503, "error", "unavailable")]


def test_an_upstream_timeout_is_logged_as_a_timeout(dirs) -> None:
    with (
        engine(ttft_ms=3000, tokens=1) as stalled,
        gateway(dirs, [stalled.url], **{"gateway.read_timeout_s": 0.3}) as gw,
    ):
        resp = chat(gw.url, "bot")
        rows = logged(gw)
    assert resp.status_code == 503
    assert [(r.variant, r.outcome, r.error_kind) for r in rows] == [("bot@v1", "error", "timeout")]


def test_an_in_stream_error_event_is_an_error_and_is_not_retried_after_the_first_byte(two_versions) -> None:
    with engine(**QUICK, stream_faults={"bot@v1": "error@2"}) as eng, gateway(two_versions, [eng.url]) as gw:
        resp, events = sse(gw.url, "bot")
        rows = logged(gw)
    assert resp.status_code == 200 and resp.headers["x-loraplane-adapter"] == "bot@v1"
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == " alpha"  # the client saw tokens
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_error" and "injected generation failure" in error["message"]
    assert events[-1] == "[DONE]"
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(500, "error", "stream_error")]


def test_an_error_as_the_first_event_falls_back_before_the_first_byte(two_versions) -> None:
    with engine(**QUICK, stream_faults={"bot@v2": "error@0"}) as eng, gateway(two_versions, [eng.url]) as gw:
        start_rollout(gw.url)
        outcomes = []
        for i in range(12):  # completions: no role chunk, the error is the engine's first event
            resp, events = sse(gw.url, "bot", route="completions", user=f"u{i}")
            outcomes.append((resp.status_code, resp.headers.get("x-loraplane-fallback-from"), events[-1]))
        rows = logged(gw, 12 + sum(o[1] is not None for o in outcomes))
    assert {(status, last) for status, _, last in outcomes} == {(200, "[DONE]")}
    assert any(source == "bot@v2" for _, source, _ in outcomes)
    failures = [r for r in rows if r.variant == "bot@v2"]
    assert failures and {(r.outcome, r.error_kind) for r in failures} == {("error", "stream_error")}
    assert all(r.outcome == "ok" for r in rows if r.variant == "bot@v1")


def test_a_truncated_stream_is_an_error(dirs) -> None:
    with engine(**QUICK, stream_faults={"bot@v1": "truncate@2"}) as eng, gateway(dirs, [eng.url]) as gw:
        resp, events = sse(gw.url, "bot")
        rows = logged(gw)
    assert resp.status_code == 200 and json.loads(events[-2])["error"]["code"] == "engine_truncated"
    assert (rows[0].status, rows[0].outcome, rows[0].error_kind) == (502, "error", "truncated")


def test_a_stream_that_ends_before_its_first_event_is_a_plain_error(dirs) -> None:
    with engine(**QUICK, stream_faults={"bot@v1": "truncate@0"}) as eng, gateway(dirs, [eng.url]) as gw:
        resp, events = sse(gw.url, "bot", route="completions")
        rows = logged(gw)
    assert resp.status_code == 502 and events == []  # an HTTP error, not a 200 with an error event
    assert [(r.outcome, r.error_kind) for r in rows] == [("error", "truncated")]


@pytest.mark.parametrize("stream", [True, False])
def test_an_engine_that_dies_before_the_first_event_moves_the_request_to_the_next_engine(dirs, stream) -> None:
    """Headers sent, then the engine process died: the client has nothing yet, so the request runs on
    the next engine and is logged once, as that engine's success; the dead engine is taken out."""
    with (
        engine(**QUICK, stream_faults={"bot@v1": "die@0"}) as dying,
        engine(**QUICK) as good,
        gateway(dirs, []) as gw,
    ):
        gw.state.pool.engines = [Engine(0, dying.url), Engine(1, good.url)]
        # both engines hold bot@v1, equally idle: the request goes to engine 0 first
        httpx.post(f"{gw.url}/admin/adapters/bot/v1/load", json={}, timeout=30).raise_for_status()
        assert gw.state.pool.holders("bot@v1") == [0, 1]
        if stream:
            resp, events = sse(gw.url, "bot@v1")
        else:
            resp = chat(gw.url, "bot@v1")
            events = ["[DONE]"] if resp.status_code == 200 and resp.json()["choices"] else []
        rows = logged(gw)
        dead = gw.state.pool.engines[0].healthy
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert (resp.status_code, resp.headers["x-loraplane-engine"], events[-1]) == (200, "1", "[DONE]")
    assert not any('"error"' in e for e in events) and dead is False
    assert [(r.status, r.outcome) for r in rows] == [(200, "ok")]
    assert "loraplane_upstream_retries_total 1.0" in metrics


def test_a_gateway_without_engines_answers_a_logged_503(dirs) -> None:
    with gateway(dirs, []) as gw:
        resp = chat(gw.url, "bot@v1")
        rows = logged(gw)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "engine_unavailable"
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(503, "error", "unavailable")]


def test_an_engine_dying_on_the_only_engine_is_a_logged_503(dirs) -> None:
    with engine(**QUICK, stream_faults={"bot@v1": "die@0"}) as dying, gateway(dirs, [dying.url]) as gw:
        resp, events = sse(gw.url, "bot@v1")
        rows = logged(gw)
    assert resp.status_code == 503 and events == []  # a plain HTTP error, not a 200 with an error event
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(503, "error", "unavailable")]


def test_a_client_that_hangs_up_mid_stream_is_499_not_an_error(dirs) -> None:
    with engine(tokens=200, ttft_ms=1.0, itl_ms=20.0) as eng, gateway(dirs, [eng.url]) as gw:
        body = {"model": "bot", "messages": MSG, "stream": True, "max_tokens": 200}
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as resp:
            lines = resp.iter_lines()
            assert [next(lines) for _ in range(3)]  # a few events, then the client goes away
        rows = logged(gw)
        wait_for(lambda: gw.state.pool.engines[0].in_flight == 0 and eng.app.state.engine.running == 0)
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(499, "client_closed", None)]
    assert rows[0].ttft_s is not None


def test_the_callers_own_bad_request_is_a_client_error(dirs) -> None:
    with engine(**QUICK, max_model_len=64) as eng, gateway(dirs, [eng.url]) as gw:
        resp = chat(gw.url, "bot", max_tokens=100)  # within the gateway's bounds, beyond the engine's context
        ok = chat(gw.url, "bot", max_tokens=4)
        rows = logged(gw, 2)
    assert resp.status_code == 400 and "maximum context length" in resp.json()["error"]["message"]
    assert ok.status_code == 200
    assert [(r.status, r.outcome, r.error_kind) for r in rows] == [(400, "client_error", None), (200, "ok", None)]


def test_pinned_requests_and_the_base_never_fall_back(two_versions) -> None:
    with engine(**QUICK) as eng, gateway(two_versions, [eng.url]) as gw:
        v1 = gw.state.resolver.resolve("bot@v1", "k", None).ref
        assert v1 is not None
        v2 = gw.state.resolver.resolve("bot@v2", "k", None).ref
        assert gw.state.proxy.fallback_target(Target(BASE, None, upstream_model=BASE)) is None
        assert gw.state.proxy.fallback_target(Target("bot", v2, upstream_model="bot@v2", rollout="gone")) is None
        assert gw.state.proxy.fallback_target(Target("ab", v2, "ab", "bot@v2", pinned=True)) is None
        assert gw.state.proxy.fallback_target(Target("ab", v1, "ab", "bot@v1")) is None  # it is the stable itself
        control = gw.state.proxy.fallback_target(Target("ab", v2, "ab", "bot@v2"))
        assert control is not None and control.ref == v1 and control.experiment == "ab"


def test_non_streamed_load_counts_for_least_busy_routing(dirs) -> None:
    with engine(ttft_ms=800, tokens=1) as e0, engine(ttft_ms=800, tokens=1) as e1, gateway(dirs, []) as gw:
        gw.state.pool.engines = [Engine(0, e0.url), Engine(1, e1.url)]
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(chat, gw.url)
            time.sleep(0.3)  # the first is in flight on engine 0 (the least busy of two idle engines)
            second = pool.submit(chat, gw.url)
            engines = {first.result().headers["x-loraplane-engine"], second.result().headers["x-loraplane-engine"]}
        assert engines == {"0", "1"}
        assert [e.in_flight for e in gw.state.pool.engines] == [0, 0]  # every lease came back
