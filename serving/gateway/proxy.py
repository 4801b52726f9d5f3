"""Forward one OpenAI request to an engine: pick, hot-load, retry before the first byte, relay.

Retries: a request moves to another engine only while nothing was sent to the client, and only
after a connection failure or timeout (an engine's HTTP answer, 500 included, is relayed).
Once streaming, an engine failure ends the stream with an OpenAI-style error event. A client
disconnect closes the upstream connection, which makes vLLM abort the generation.

The hot path uses aiohttp's client (state.session): per proxied request it costs a fraction of
httpx's CPU time (httpx's pool scans every connection and polls its socket on each request);
engine control calls (adapter loads, health) keep using httpx (serving/pool.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.engine import ENGINE_KEY_ENV
from serving.errors import EngineUnavailable, ServingError
from serving.gateway.resolve import Target
from serving.gateway.state import GatewayState
from serving.metrics import status_class
from serving.pool import Engine
from serving.store import RequestRecord

CONTENT_FIELD = {"chat": ("delta", "content"), "completions": ("text",)}


@dataclass
class Call:
    route: str  # "chat" | "completions"
    path: str  # upstream path
    body: dict
    target: Target
    started: float
    key_name: str = "anonymous"  # the API key's name (never the key)
    # Filled in while relaying, for the request log:
    response_id: str | None = None  # the `id` the client receives
    ttft_s: float | None = None
    usage: dict | None = None
    answer: list[str] | None = field(default=None)  # response text parts, only with capture: bodies

    def __post_init__(self) -> None:
        if self.target.capture_bodies:
            self.answer = []

    def record(self, status: int) -> RequestRecord:
        usage = self.usage or {}
        capture = self.answer is not None
        return RequestRecord(
            id=self.response_id or f"gw-{uuid.uuid4().hex}",  # errors the engine never answered
            created_at=time.time(),
            route=self.route,
            model=self.target.model_label,
            variant=self.target.variant_label,
            key_name=self.key_name,
            status=status,
            latency_s=time.perf_counter() - self.started,
            experiment=self.target.experiment,
            rollout=self.target.rollout,
            ttft_s=self.ttft_s,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            request_body={k: v for k, v in self.body.items() if k != "stream_options"} if capture else None,
            response_text="".join(self.answer or []) if capture else None,
        )

    @property
    def labels(self) -> tuple[str, str]:
        return self.target.model_label, self.target.variant_label

    def headers(self, engine: Engine) -> dict[str, str]:
        out = {"X-Loraplane-Adapter": self.target.adapter_label, "X-Loraplane-Engine": engine.label}
        if self.target.experiment:
            out["X-Loraplane-Experiment"] = self.target.experiment
            out["X-Loraplane-Variant"] = self.target.variant_label
        return out


def _content(chunk: dict, route: str) -> str:
    """The text a chunk carries (first choice with content)."""
    for choice in chunk.get("choices") or []:
        node = choice
        for key in CONTENT_FIELD[route]:
            node = node.get(key) if isinstance(node, dict) else None
        if node:
            return str(node)
    return ""


def _answer_text(payload: dict, route: str) -> str:
    choices = payload.get("choices") or [{}]
    if route == "chat":
        return str((choices[0].get("message") or {}).get("content") or "")
    return str(choices[0].get("text") or "")


UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


async def _open(state: GatewayState, engine: Engine, call: Call) -> aiohttp.ClientResponse:
    """The engine's response, headers read, body not yet."""
    if call.target.ref is not None:
        await state.pool.ensure_loaded(engine, call.target.ref)
    return await state.session.post(f"{engine.url}{call.path}", json=call.body)


async def open_upstream(state: GatewayState, call: Call) -> tuple[Engine, aiohttp.ClientResponse]:
    """Try engines in affinity order until one answers. Only a connection failure or a timeout
    takes an engine out (and moves the request on); any HTTP answer, a 500 included, is that
    request's own answer and is relayed."""
    lora_key = call.target.ref.key if call.target.ref else None
    last_error = "no engine tried"
    for attempt, engine in enumerate(state.pool.candidates(lora_key)):
        if attempt:
            state.metrics.retries.inc()
        try:
            return engine, await _open(state, engine, call)
        except (*UPSTREAM_ERRORS, EngineUnavailable) as exc:
            state.pool.mark_down(engine, "connect")
            last_error = f"engine {engine.index}: {exc!r}"
    raise EngineUnavailable(f"the engine is unavailable ({last_error}); retry shortly", code="engine_unavailable")


def _record_usage(state: GatewayState, call: Call, usage: dict | None) -> None:
    if usage:
        call.usage = usage
        model, variant = call.labels
        state.metrics.prompt_tokens.labels(model, variant).inc(usage.get("prompt_tokens") or 0)
        state.metrics.completion_tokens.labels(model, variant).inc(usage.get("completion_tokens") or 0)


def _finish(state: GatewayState, call: Call, status: int) -> None:
    model, variant = call.labels
    state.metrics.requests.labels(call.route, model, variant, status_class(status)).inc()
    state.metrics.request_latency.labels(call.route, model, variant).observe(time.perf_counter() - call.started)
    state.control.log(call.record(status))  # queued for the background writer; never blocks


async def forward(state: GatewayState, call: Call) -> Response:
    stream = bool(call.body.get("stream"))
    wants_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
    if stream:  # always ask for usage upstream so token counters work; strip it if not asked for
        call.body["stream_options"] = {**(call.body.get("stream_options") or {}), "include_usage": True}
    engine, resp = await open_upstream(state, call)  # errors are counted by the app's handlers
    if not stream or resp.status != 200:
        return await _relay_json(state, call, engine, resp)
    state.metrics.in_flight_streams.inc()
    return StreamingResponse(
        _relay_stream(state, call, engine, resp, wants_usage),
        media_type="text/event-stream",
        headers=call.headers(engine),
    )


async def _relay_json(state: GatewayState, call: Call, engine: Engine, resp: aiohttp.ClientResponse) -> Response:
    try:
        raw = await resp.read()
    except UPSTREAM_ERRORS as exc:
        state.pool.mark_down(engine, "read")
        raise EngineUnavailable(f"the engine is unavailable: engine {engine.index} broke off ({exc!r})") from exc
    finally:
        resp.release()
    status = resp.status
    if status == 401:  # the engine refused the gateway itself, not the client
        text = raw[:200].decode(errors="replace")
        message = f"engine {engine.index} refused the gateway ({text}): set {ENGINE_KEY_ENV} to the engines' API key"
        raw, status = json.dumps(ServingError(message, code="engine_auth").body()).encode(), 502
    try:
        payload = json.loads(raw)
    except ValueError:  # e.g. a plain-text 500 page: still this request's error, in OpenAI's shape
        text = raw[:300].decode(errors="replace")
        status = status if status >= 400 else 502
        payload = ServingError(f"engine {engine.index} answered {resp.status} with a non-JSON body: {text!r}").body()
    if status == 200 and isinstance(payload, dict):
        call.response_id = payload.get("id")
        _record_usage(state, call, payload.get("usage"))
        if call.answer is not None:
            call.answer.append(_answer_text(payload, call.route))
    elif status == 404 and call.target.ref is not None:
        state.pool.forget(engine, call.target.ref)  # the engine lost it (restart): reload next time
    _finish(state, call, status)
    return JSONResponse(payload, status_code=status, headers=call.headers(engine))


def _error_event(message: str) -> str:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": "engine_unavailable"}}
    return f"data: {json.dumps(body)}\n\n"


async def _relay_stream(
    state: GatewayState, call: Call, engine: Engine, resp: aiohttp.ClientResponse, wants_usage: bool
) -> AsyncIterator[str]:
    status, first_token, complete = 200, True, False
    model, variant = call.labels
    lease = state.pool.lease(engine)
    try:
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload != "[DONE]":
                chunk = json.loads(payload)
                if call.response_id is None:
                    call.response_id = chunk.get("id")
                if chunk.get("usage"):
                    _record_usage(state, call, chunk["usage"])
                    if not wants_usage:
                        if not chunk.get("choices"):
                            continue
                        chunk["usage"] = None
                        payload = json.dumps(chunk)
                text = _content(chunk, call.route)
                if text and call.answer is not None:
                    call.answer.append(text)
                if first_token and text:
                    first_token = False
                    call.ttft_s = time.perf_counter() - call.started
                    state.metrics.ttft.labels(model, variant).observe(call.ttft_s)
            yield f"data: {payload}\n\n"
        complete = True
    except (*UPSTREAM_ERRORS, ValueError) as exc:
        status = 503
        state.pool.mark_down(engine, "stream")
        yield _error_event(f"the engine is unavailable: engine {engine.index} broke off mid-stream ({exc!r})")
        yield "data: [DONE]\n\n"
    finally:
        # Done: the connection goes back to the pool. Otherwise (client disconnect, engine failure)
        # it is closed, which makes vLLM abort the generation.
        if complete:
            resp.release()
        else:
            resp.close()
        lease.release()
        state.metrics.in_flight_streams.dec()
        _finish(state, call, status)
