"""Admission: how many requests the gateway takes at once, and how long one waits for an upstream
connection. Overload sheds (429/503 with Retry-After) instead of queueing.

A request holds a `Lease` from admission until its response has been sent, a stream until its
last byte (or the client hung up): streams count toward `gateway.max_in_flight` while they run.
Before forwarding, the lease also takes one of `gateway.max_upstream_connections` upstream slots,
waiting at most `gateway.upstream_wait_timeout_s`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from serving.config import GatewayConfig
from serving.errors import Overloaded, RateLimited


class Lease:
    def __init__(self, admission: Admission):
        self._admission = admission
        self._upstream = False
        self._released = False

    async def wait_upstream(self) -> None:
        a = self._admission
        try:
            await asyncio.wait_for(a.upstream.acquire(), a.cfg.upstream_wait_timeout_s)
        except TimeoutError:
            raise Overloaded(
                f"no upstream connection free within {a.cfg.upstream_wait_timeout_s} s "
                f"(gateway.max_upstream_connections = {a.upstream_limit}); retry shortly",
                retry_after_s=max(1, math.ceil(a.cfg.upstream_wait_timeout_s)),
            ) from None
        self._upstream = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admission.in_flight -= 1
        if self._upstream:
            self._admission.upstream.release()


class Admission:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.in_flight = 0  # requests admitted and not yet answered (streams until they end)
        self.upstream_limit = cfg.max_upstream_connections or cfg.max_in_flight
        self.upstream = asyncio.Semaphore(self.upstream_limit)

    def admit(self) -> Lease:
        if self.in_flight >= self.cfg.max_in_flight:
            raise RateLimited(
                f"the gateway is at its limit of {self.cfg.max_in_flight} requests in flight; retry shortly",
                retry_after_s=1,
            )
        self.in_flight += 1
        return Lease(self)


class Leased(Response):
    """Sends `inner`, then calls `release` whatever happened (sent, failed, client gone)."""

    def __init__(self, inner: Response, release: Callable[[], None]):
        self.inner, self.release = inner, release
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.release()
        if self.background is not None:
            await self.background()
