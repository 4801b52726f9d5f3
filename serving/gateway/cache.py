"""The response cache: a deterministic request asked again is answered without an engine.

    routes.handle: authorize -> rate limit -> resolve -> cache.lookup -> (miss) forward -> cache.keep

Opt-in (`cache.enabled`). Cacheable: a request with `temperature: 0` or a `seed`, streamed or not.
Key: sha256 of (the base's weights and engine numerics, the route, the resolved adapter version
`name@vN` — the variant an experiment or rollout chose, never the public name — and the request as
sent upstream, after the gateway's limits, without `model` and `user`, keys sorted; a non-streamed
request's also without `stream` and `stream_options`). Only 200 answers are stored, a stream only
once it ended with [DONE], and never a control's fallback answer (it answered for another version
than the key names). A stream is stored as the events the client got and replayed in one write.

Keys of callers: the lookup runs after the caller was authorized for the model and took its
rate-limit token, so a hit only gives a caller what the engine would have given it for the same
request; the key holds nothing of the caller's, so callers share entries (see docs/cache.md).

Answers: a hit gets its own response id, is logged as its own request-log row with
excluded="cached" (left out of rollout statistics, its feedback too) and no token counts (the
engines did no work), and carries `X-Loraplane-Cache: hit`; a looked-up request `miss`, and a request
with `Cache-Control: no-cache` `bypass` (not read; its fresh answer replaces the stored one;
`no-store` neither reads nor writes). Requests the cache cannot serve carry no such header.

Backends: an LRU in the process (entries, bytes and TTL bounded), or Redis/Valkey
(`cache.redis_url`, shared by replicas, entries expire after `ttl_s`). A Redis that fails or is
slower than `redis_timeout_s` is left alone for REDIS_REST_S; meanwhile requests go on uncached and
loraplane_cache_errors_total counts each.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as redis
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError
from starlette.responses import AsyncContentStream, Content

from serving.config import CacheConfig, ServingConfig
from serving.gateway.protocol import RouteSpec
from serving.gateway.recorder import Call
from serving.metrics import GatewayMetrics

CACHE_HEADER = "X-Loraplane-Cache"
KEY_PREFIX = "loraplane:cache:"
# Not part of what the answer depends on; a stream's key keeps `stream` and `stream_options` (what
# its chunks look like: usage or not), a non-streamed answer's drops them.
KEY_DROPPED = ("model", "user")
KEY_DROPPED_JSON = (*KEY_DROPPED, "stream", "stream_options")
DONE_EVENT = "data: [DONE]\n\n"  # a relayed stream that ended well ends with this event alone
REDIS_REST_S = 1.0  # after a Redis failure, requests skip Redis this long (no timeout per request)
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class CacheUnavailable(Exception):
    """The shared cache store failed (or rests after a failure): go on uncached."""


def is_cacheable(body: dict) -> bool:
    """A request whose answer the engine repeats: temperature 0, or a seed given."""
    temperature, seed = body.get("temperature"), body.get("seed")
    greedy = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return greedy or seeded


def cache_key(identity: str, call: Call) -> str:
    """sha256 of what the answer depends on (the module docstring lists it)."""
    dropped = KEY_DROPPED if call.body.get("stream") else KEY_DROPPED_JSON
    request = {k: v for k, v in call.body.items() if k not in dropped}
    material = [identity, call.route, call.target.adapter_label, request]
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def cache_directives(headers: Mapping[str, str]) -> set[str]:
    """{"no-cache", "no-store", ...} from the request's Cache-Control header."""
    value = headers.get("cache-control") or ""
    return {part.strip().lower() for part in value.split(",") if part.strip()}


class CacheBackend(Protocol):
    name: str  # the metrics' backend label

    async def get(self, key: str) -> bytes | None: ...  # CacheUnavailable when it cannot tell

    async def put(self, key: str, value: bytes) -> None: ...  # CacheUnavailable when it failed

    async def close(self) -> None: ...


class LocalCache:
    """An LRU in this process: at most max_entries answers and max_bytes bytes, each for ttl_s."""

    name = "local"

    def __init__(self, cfg: CacheConfig, metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.metrics, self.clock = cfg, metrics, clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires at, answer)
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._drop(key, "ttl")
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, value: bytes) -> None:
        if key in self._entries:
            self._drop(key, None)
        now = self.clock()
        self._entries[key] = (now + self.cfg.ttl_s, value)
        self._bytes += len(value)
        while self._entries:  # expired answers at the cold end first, then the least recently used
            oldest_key, (expires, _) = next(iter(self._entries.items()))
            if expires <= now:
                self._drop(oldest_key, "ttl")
            elif len(self._entries) > self.cfg.max_entries or self._bytes > self.cfg.max_bytes:
                self._drop(oldest_key, "size")
            else:
                break
        self._gauge()

    def _drop(self, key: str, reason: str | None) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)
        if reason is not None:
            self.metrics.cache_evictions.labels(self.name, reason).inc()
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.cache_entries.set(len(self._entries))
        self.metrics.cache_bytes.set(self._bytes)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Answers in Redis/Valkey under `loraplane:cache:<sha256>`, expiring after ttl_s (shared by replicas)."""

    name = "redis"

    def __init__(self, cfg: CacheConfig, url: str, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.clock = cfg, clock
        timeout = cfg.redis_timeout_s
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._rest_until = 0.0  # after a failure, Redis is not asked until then

    async def get(self, key: str) -> bytes | None:
        self._check_resting()
        try:
            value = await self.client.get(KEY_PREFIX + key)
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None
        return value.encode() if isinstance(value, str) else value  # bytes: the client does not decode

    async def put(self, key: str, value: bytes) -> None:
        self._check_resting()
        try:
            await self.client.set(KEY_PREFIX + key, value, px=max(1, int(self.cfg.ttl_s * 1000)))
        except REDIS_ERRORS as exc:
            raise self._failed(exc) from None

    def _check_resting(self) -> None:
        if self.clock() < self._rest_until:
            raise CacheUnavailable("the cache's Redis failed a moment ago")

    def _failed(self, exc: BaseException) -> CacheUnavailable:
        self._rest_until = self.clock() + REDIS_REST_S
        return CacheUnavailable(f"the cache's Redis failed: {type(exc).__name__}")

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Lookup:
    """What the cache made of one request: the header value (None: not cacheable), the key to store
    its answer under (None: do not store), and the answer when it was a hit."""

    state: str | None = None  # "hit" | "miss" | "bypass"
    key: str | None = None
    hit: Response | None = None
    response_id: str = ""  # the id the answer to store carries (replaced by each hit's own)


NOT_CACHEABLE = Lookup()


class ResponseCache:
    """Looks requests up and keeps their answers; owns its backend (closed with the app)."""

    def __init__(self, cfg: ServingConfig, metrics: GatewayMetrics, base_weights_sha256: str):
        self.cfg, self.metrics = cfg.cache, metrics
        shared = cfg.cache.enabled and cfg.cache.redis_url
        self.backend: CacheBackend = RedisCache(cfg.cache, shared) if shared else LocalCache(cfg.cache, metrics)
        # What else the answer depends on: the base's weights and how the engines compute.
        self.identity = f"{base_weights_sha256}/{cfg.engine.dtype}/{cfg.engine.quantization}"

    async def lookup(self, headers: Mapping[str, str], call: Call) -> Lookup:
        if not self.cfg.enabled or not is_cacheable(call.body):
            return NOT_CACHEABLE
        backend = self.backend.name
        key = cache_key(self.identity, call)
        directives = cache_directives(headers)
        if directives & {"no-cache", "no-store"}:
            self.metrics.cache_bypasses.labels(backend).inc()
            return Lookup("bypass", None if "no-store" in directives else key, response_id=call.response_id)
        try:
            stored = await self.backend.get(key)
        except CacheUnavailable:
            self.metrics.cache_errors.labels(backend).inc()
            return Lookup("miss", None)  # nor store its answer: the store is down
        if stored is None:
            self.metrics.cache_misses.labels(backend).inc()
            return Lookup("miss", key, response_id=call.response_id)
        self.metrics.cache_hits.labels(backend).inc()
        return Lookup("hit", key, replay(stored, call))

    async def keep(self, lookup: Lookup, response: Response) -> Response:
        """Mark `response`; store it under the lookup's key when it is a 200 answer of that version
        (a stream once it ended with [DONE], while the client reads it)."""
        if lookup.state is None:
            return response
        response.headers[CACHE_HEADER] = lookup.state
        fallback = "x-loraplane-fallback-from" in response.headers  # another version answered
        if lookup.key is None or response.status_code != 200 or fallback:
            return response
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._tee(lookup.key, lookup.response_id, response.body_iterator)
        elif isinstance(response.body, bytes):
            await self._put(lookup.key, lookup.response_id, response.body)
        return response

    async def _tee(self, key: str, response_id: str, events: AsyncContentStream) -> AsyncIterator[Content]:
        """Relays a stream's events; one that ended well and fits is stored before the client gets
        its [DONE] (a request sent after it finds the answer, as feedback finds the log row)."""
        kept: list[bytes] = []
        size = 0
        async for event in events:
            if size <= self.cfg.max_entry_bytes:
                kept.append(event.encode() if isinstance(event, str) else bytes(event))
                size += len(kept[-1])
            # an engine error, a truncated or broken stream ends with an error event and [DONE] in one
            if size <= self.cfg.max_entry_bytes and kept and kept[-1] == DONE_EVENT.encode():
                await self._put(key, response_id, b"".join(kept))
            yield event

    async def _put(self, key: str, response_id: str, body: bytes) -> None:
        stored = json.dumps(response_id).encode() + b"\n" + body  # the id first: see replay
        if len(stored) > self.cfg.max_entry_bytes:
            return
        try:
            await self.backend.put(key, stored)
        except CacheUnavailable:
            self.metrics.cache_errors.labels(self.backend.name).inc()

    async def close(self) -> None:
        await self.backend.close()


def replay(stored: bytes, call: Call) -> Response:
    """The stored answer (JSON, or a stream's events) under the call's own id, logged as the call's
    row (excluded="cached")."""
    old_id, _, body = stored.partition(b"\n")
    body = body.replace(old_id, json.dumps(call.response_id).encode())  # ids are unique uuids
    streamed = bool(call.body.get("stream"))
    call.excluded = "cached"
    if call.answer is not None:  # the experiment or rollout captures bodies
        call.add_text(_stream_text(body, call.spec) if streamed else call.spec.answer_text(json.loads(body)))
    call.finish(200)
    headers = {**call.headers(None), CACHE_HEADER: "hit"}
    if streamed:
        return StreamingResponse(_once(body), 200, headers, media_type="text/event-stream")
    return Response(body, 200, headers, media_type="application/json")


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _stream_text(events: bytes, spec: RouteSpec) -> str:
    payloads = (line[6:] for line in events.decode().split("\n") if line.startswith("data: {"))
    return "".join(spec.chunk_text(json.loads(payload)) for payload in payloads)
