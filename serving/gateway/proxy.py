"""Forward one OpenAI request to an engine: pick, hot-load, retry before the first byte, relay.

    forward -> try the assigned variant -> (failed before the first byte) try the control once

Engines: a request moves to another engine only while nothing was sent to the client, and only
after a connection failure or timeout, before or after the engine's headers (an engine's HTTP
answer, a 500 included, is that request's answer); an engine that failed is taken out, so the
next try goes elsewhere. Each try holds a lease on its engine (serving/gateway/pool.py) from the
pick until the answer was read or the stream ended, so least-busy routing sees streamed and non-streamed load alike.

Variants: every try's outcome is logged against the variant it ran on (serving/gateway/recorder.py):
an adapter that fails to load, a 5xx, no engine, a timeout, an in-stream error event, a stream
that ends without `[DONE]` are errors; a client hang-up is 499. When a rollout's or experiment's
assigned variant fails before the first byte (not pinned, not the control itself), the request is
tried once more on the control (the rollout's control, the experiment variant's stable version):
the failure stays on the variant's row and the control's answer is logged with
excluded="fallback"; the response names both (X-Loraplane-Variant, X-Loraplane-Fallback-From).
A stream's first event is read before the client gets any byte, so a stream that fails at once
is a failure before the first byte too. Once streaming, a failure ends the stream with an
OpenAI-style error event. A client disconnect closes the upstream connection, which makes vLLM
abort the generation.

Ids: the client gets the call's id (recorder.Call.response_id) in every body and chunk; the
engine is asked to use it too (X-Request-Id), so rewriting a chunk is the exception.

The hot path uses aiohttp's client (Proxy.session): per proxied request it costs a fraction of
httpx's CPU time (httpx's pool scans every connection and polls its socket on each request);
engine control calls (adapter loads, health) keep using httpx (serving/gateway/pool.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace

import aiohttp
from fastapi.responses import JSONResponse, Response

from serving.engines.process import ENGINE_KEY_ENV
from serving.errors import AdapterRejected, EngineUnavailable, ServingError
from serving.gateway.control import ControlPlane
from serving.gateway.pool import Engine, EngineLease, EnginePool
from serving.gateway.recorder import Call, FailedBeforeFirstByte, failure_kind
from serving.gateway.resolve import Resolver, Target
from serving.gateway.stream import BrokeOff, StreamRelay, stream_response
from serving.metrics import GatewayMetrics

UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass
class Upstream:
    """An engine's response to one try, headers read, body not yet; its engine leased until done."""

    engine: Engine
    resp: aiohttp.ClientResponse
    lease: EngineLease

    def done(self, *, complete: bool) -> None:
        """Give the connection back (complete) or close it (which makes vLLM abort), end the lease."""
        if complete:
            self.resp.release()
        else:
            self.resp.close()
        self.lease.release()


class Proxy:
    """Forwards calls to the engines: owns the hot path's connections (aiohttp) and the fallback rule."""

    def __init__(
        self,
        resolver: Resolver,
        control: ControlPlane,
        pool: EnginePool,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
    ):
        self.resolver, self.control, self.pool, self.session, self.metrics = resolver, control, pool, session, metrics

    async def forward(self, call: Call) -> Response:
        try:
            return await self.try_once(call)
        except FailedBeforeFirstByte as failed:
            control = self.fallback_target(call.target)
            if control is None:
                return failed.response
        self.metrics.fallbacks.labels(*call.labels).inc()
        try:
            response = await self.try_once(call.fallback(control))
        except FailedBeforeFirstByte as failed_too:
            response = failed_too.response
        response.headers["X-Loraplane-Fallback-From"] = call.target.variant_label
        return response

    def fallback_target(self, target: Target) -> Target | None:
        """Where a request goes when its assigned variant failed before the first byte: the rollout's
        control, or the stable version of an experiment variant's adapter. None for the base model, a
        pinned variant, a request that is not split, and a variant that is the control itself."""
        if target.ref is None or target.pinned:
            return None
        if target.rollout is not None:
            rollout = self.control.snapshot.rollouts.get(target.rollout)
            control = rollout.control if rollout is not None else None
        elif target.experiment is not None:
            control = f"{target.ref.name}@{self.control.stable_version(target.ref.name)}"
        else:
            return None
        if control is None or control == target.ref.key:
            return None
        try:
            ref = self.resolver.resolve(control, "", None).ref  # a pinned version: validated, no assignment
        except ServingError:
            return None
        return None if ref is None else replace(target, ref=ref, upstream_model=ref.key)

    async def try_once(self, call: Call) -> Response:
        """Run `call` on an engine, no fallback (each of forward's tries; a shadow mirror's only one).
        An engine that breaks off before the client got anything is taken out and the request moves
        to the next healthy engine (nothing was sent, nothing logged yet).
        Raises FailedBeforeFirstByte (logged) when it failed before the client got anything; anything
        else it returns is the client's answer (logged when it ends)."""
        tries = max(1, len(self.pool.engines))  # each engine once at most; with none, one try (a logged 503)
        for attempt in range(tries):
            try:
                upstream = await self.open_upstream(call)
            except (EngineUnavailable, AdapterRejected) as exc:
                call.finish(exc.status, failure_kind(exc))
                raise FailedBeforeFirstByte(JSONResponse(exc.body(), exc.status, call.headers(None))) from exc
            try:
                return await self._answer(call, upstream)
            except BrokeOff as broke:
                if attempt + 1 == tries or not any(e.healthy for e in self.pool.engines):
                    call.finish(broke.error.status, broke.kind)
                    raise FailedBeforeFirstByte(
                        JSONResponse(broke.error.body(), broke.error.status, call.headers(None))
                    ) from broke
                self.metrics.retries.inc()
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _answer(self, call: Call, upstream: Upstream) -> Response:
        """The client's answer from one engine's response; BrokeOff before the first byte."""
        if not call.body.get("stream") or upstream.resp.status != 200:
            return await self._relay_json(call, upstream)
        engine = upstream.engine
        relay = StreamRelay(
            call,
            upstream.resp,
            engine.label,
            bool((call.body.get("stream_options") or {}).get("include_usage")),
            self.metrics,
            on_end=upstream.done,
            on_broken=lambda: self.pool.mark_down(engine, "stream"),
        )
        await relay.start()  # reads the first event; BrokeOff, FailedBeforeFirstByte
        return stream_response(relay, call.headers(engine))

    async def _open(self, engine: Engine, call: Call) -> aiohttp.ClientResponse:
        """The engine's response, headers read, body not yet."""
        if call.target.ref is not None:
            await self.pool.ensure_loaded(engine, call.target.ref)
        body = call.body
        if body.get("stream"):  # always ask for usage upstream so token counters work; stripped if not asked for
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        headers = {"X-Request-Id": call.engine_request_id}  # vLLM builds the response id from it
        return await self.session.post(f"{engine.url}{call.path}", json=body, headers=headers)

    async def open_upstream(self, call: Call) -> Upstream:
        """Try engines in affinity order until one answers. Only a connection failure or a timeout
        takes an engine out (and moves the request on); any HTTP answer, a 500 included, is that
        request's own answer. An adapter the engine refuses to load raises AdapterRejected (422)."""
        lora_key = call.target.ref.key if call.target.ref else None
        last_error: BaseException | None = None
        tried = "no engine tried"
        for attempt, engine in enumerate(self.pool.candidates(lora_key)):
            if attempt:
                self.metrics.retries.inc()
            lease = self.pool.lease(engine)  # counted from the pick: least-busy routing sees it at once
            try:
                return Upstream(engine, await self._open(engine, call), lease)
            except (*UPSTREAM_ERRORS, EngineUnavailable) as exc:
                lease.release()
                self.pool.mark_down(engine, "connect")
                last_error, tried = exc, f"engine {engine.index}: {exc!r}"
            except BaseException:
                lease.release()
                raise
        raise EngineUnavailable(f"the engine is unavailable ({tried}); retry shortly", code="engine_unavailable") from (
            last_error
        )

    async def _relay_json(self, call: Call, upstream: Upstream) -> Response:
        engine, resp = upstream.engine, upstream.resp
        try:
            raw = await resp.read()
        except UPSTREAM_ERRORS as exc:
            self.pool.mark_down(engine, "read")
            error = EngineUnavailable(
                f"the engine is unavailable: engine {engine.index} broke off ({exc!r})", code="engine_unavailable"
            )
            raise BrokeOff(error, failure_kind(exc)) from exc
        finally:
            upstream.done(complete=True)
        status = resp.status
        if status == 401:  # the engine refused the gateway itself, not the client
            text = raw[:200].decode(errors="replace")
            message = (
                f"engine {engine.index} refused the gateway ({text}): set {ENGINE_KEY_ENV} to the engines' API key"
            )
            raw, status = json.dumps(ServingError(message, code="engine_auth").body()).encode(), 502
        try:
            payload = json.loads(raw)
        except ValueError:  # e.g. a plain-text 500 page: still this request's error, in OpenAI's shape
            text = raw[:300].decode(errors="replace")
            status = status if status >= 400 else 502
            payload = ServingError(
                f"engine {engine.index} answered {resp.status} with a non-JSON body: {text!r}"
            ).body()
        error_kind = None
        if status == 200 and isinstance(payload, dict):
            payload["id"] = call.response_id  # the gateway's id, whatever the engine chose
            call.add_usage(payload.get("usage"))
            call.add_text(call.spec.answer_text(payload))
        elif status == 404 and call.target.ref is not None:
            self.pool.forget(engine, call.target.ref)  # the engine lost it (restart): reload next time
            error_kind = "upstream_status"  # not the caller's mistake: the gateway asked for it
        elif status >= 500:
            error_kind = "upstream_status"
        call.finish(status, error_kind)
        response = JSONResponse(payload, status_code=status, headers=call.headers(engine))
        if error_kind is not None:
            raise FailedBeforeFirstByte(response)
        return response
