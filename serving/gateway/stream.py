"""Relay one engine's server-sent events to the client, and say how the stream ended.

`start()` reads the engine's first event before the client gets anything: a stream that breaks
or stalls at once raises BrokeOff (nothing logged: the proxy moves the request to another engine);
one that ends or reports an error at once fails before the first byte (FailedBeforeFirstByte),
so the proxy may still answer from another variant and the client gets a plain HTTP error.
After that every event is relayed with the gateway's response id, and the end is logged once:

    [DONE]                        -> 200, ok (logged before the client sees [DONE]: feedback may follow)
    an error event from the engine -> its code (500 if none), error "stream_error"
    the body ends without [DONE]  -> 502, error "truncated"
    the connection breaks / stalls -> 503, error "unavailable" / "timeout"
    the client hangs up           -> 499, client_closed (not the variant's error)

The three failures end the client's stream with an OpenAI-style error event and [DONE].
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.errors import EngineUnavailable, ServingError
from serving.gateway.recorder import CLIENT_CLOSED, Call, FailedBeforeFirstByte, failure_kind
from serving.metrics import GatewayMetrics

READ_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)  # ValueError: a malformed event


class BrokeOff(Exception):
    """The engine's connection broke or stalled before the client got anything: nothing is logged
    yet, so the proxy may move the request to another engine (or log `error` as its answer)."""

    def __init__(self, error: ServingError, kind: str):
        super().__init__(error.message)
        self.error, self.kind = error, kind


def _engine_error(chunk: dict) -> tuple[int, str] | None:
    """(status, message) when the chunk is vLLM's in-stream error event ({"error": {...,"code": 500}})."""
    error = chunk.get("error")
    if not isinstance(error, dict) or chunk.get("choices"):
        return None
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return status, str(error.get("message") or "no message")[:300]


def _event(error: ServingError) -> str:
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"


class StreamRelay:
    def __init__(
        self,
        call: Call,
        resp: aiohttp.ClientResponse,
        engine: str,  # its label, for messages
        wants_usage: bool,
        metrics: GatewayMetrics,
        on_end: Callable[..., None],  # on_end(complete=...): release or close the upstream
        on_broken: Callable[[], None],  # the connection failed: take the engine out
    ):
        self.call, self.resp, self.engine, self.wants_usage = call, resp, engine, wants_usage
        self.metrics, self.on_end, self.on_broken = metrics, on_end, on_broken
        self.first: str | None = None
        self.complete = False  # the upstream body was read to its end
        self.counted = False  # in loraplane_in_flight_streams
        self.closed = False

    async def _read(self) -> str | None:
        """The next `data:` payload, None at the end of the body."""
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                self.complete = True
                return None
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data: "):
                return line[6:]

    async def start(self) -> None:
        try:
            first = await self._read()
            error = None if first in (None, "[DONE]") else _engine_error(json.loads(first or "{}"))
        except READ_ERRORS as exc:
            self.on_broken()
            self.closed = True  # closed without logging: the proxy decides what the call's answer is
            self.on_end(complete=False)
            raise BrokeOff(self._broken(exc), failure_kind(exc)) from exc
        except BaseException:  # cancelled: the client went away before its first byte
            self.close()
            raise
        if first is None:
            raise self._fail(502, self._truncated(), "truncated")
        if error is not None:
            raise self._fail(error[0], self._failed(error[1]), "stream_error")
        self.first = first
        self.counted = True
        self.metrics.in_flight_streams.inc()

    def _fail(self, status: int, error: ServingError, kind: str) -> FailedBeforeFirstByte:
        self.call.finish(status, kind)
        self.close()
        return FailedBeforeFirstByte(JSONResponse(error.body(), status, self.call.headers(None)))

    def _broken(self, exc: BaseException) -> ServingError:
        return EngineUnavailable(
            f"the engine is unavailable: engine {self.engine} broke off mid-stream ({exc!r})",
            code="engine_unavailable",
        )

    def _truncated(self) -> ServingError:
        return ServingError(f"engine {self.engine} ended the stream without [DONE]; retry", code="engine_truncated")

    def _failed(self, message: str) -> ServingError:
        return ServingError(f"engine {self.engine} failed while generating: {message}", code="engine_error")

    async def events(self) -> AsyncIterator[str]:
        payload = self.first
        try:
            while payload is not None:
                if payload == "[DONE]":
                    self.call.finish(200)
                    yield "data: [DONE]\n\n"
                else:
                    chunk = json.loads(payload)
                    error = _engine_error(chunk)
                    if error is not None:
                        self.call.finish(error[0], "stream_error")
                        yield _event(self._failed(error[1]))
                        return  # closing the connection aborts the generation
                    if (out := self._relay(chunk, payload)) is not None:
                        yield out
                payload = await self._read()
            if not self.call.logged:  # the body ended without [DONE]
                self.call.finish(502, "truncated")
                yield _event(self._truncated())
        except READ_ERRORS as exc:
            self.on_broken()
            self.call.finish(503, failure_kind(exc))
            yield _event(self._broken(exc))
        finally:
            self.close()

    def _relay(self, chunk: dict, payload: str) -> str | None:
        """The event the client gets for one engine chunk (None: nothing), after recording it."""
        call, dirty = self.call, False
        if chunk.get("id") != call.response_id:
            chunk["id"], dirty = call.response_id, True
        if chunk.get("usage"):
            call.add_usage(chunk["usage"])
            if not self.wants_usage:
                if not chunk.get("choices"):
                    return None
                chunk["usage"], dirty = None, True
        text = call.spec.chunk_text(chunk)
        call.add_text(text)
        if text and call.ttft_s is None:
            call.first_token()
        return f"data: {json.dumps(chunk) if dirty else payload}\n\n"

    def close(self) -> None:
        """Idempotent. Done: the connection goes back to the pool. Otherwise (client gone, engine
        failure) it is closed, which makes vLLM abort the generation. Not logged yet: the client hung up."""
        if self.closed:
            return
        self.closed = True
        self.on_end(complete=self.complete)
        if self.counted:
            self.metrics.in_flight_streams.dec()
        self.call.finish(CLIENT_CLOSED)  # no-op when the end was logged


class RelayResponse(StreamingResponse):
    """Closes its relay whatever happened to the response: sent, failed, the client gone before or
    while it was sent (Starlette then cancels the body's iteration, which may never have begun)."""

    def __init__(self, relay: StreamRelay, headers: dict[str, str]):
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.relay.close()


def stream_response(relay: StreamRelay, headers: dict[str, str]) -> RelayResponse:
    return RelayResponse(relay, headers)
