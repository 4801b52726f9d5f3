"""Per-key rate limits, counted in this process or shared by every gateway replica through Redis.

`ratelimit.redis_url` unset: a token bucket per key in this process (serving.gateway.auth.RateLimiter);
N replicas then allow N times the rate. Set (or env LORAPLANE_REDIS_URL): one bucket per key in
Redis/Valkey, refilled and taken by one Lua script, atomically, on Redis' own clock (replicas'
clocks never disagree about a bucket). `rate_limit_per_minute` tokens, refilled continuously.
A key has two buckets of that size: its completions ("requests") and its POST /v1/feedback calls
("feedback").

Redis unreachable or slower than `ratelimit.redis_timeout_s`: with `on_redis_error: open` (the
default) the request is served uncounted and loraplane_ratelimit_errors_total goes up (alert on
it); with `closed` the request gets 503 with Retry-After.
"""

from __future__ import annotations

import time
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from serving.config import RateLimitConfig
from serving.errors import Overloaded, RateLimited
from serving.gateway.auth import Bucket, Principal, RateLimiter
from serving.metrics import GatewayMetrics

KEY_PREFIX = "loraplane:ratelimit:"
# KEYS[1] bucket; ARGV[1] tokens per minute. Returns {allowed (0|1), seconds until the next token}.
TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local per_us = capacity / 60000000.0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_us)
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) / per_us / 1000000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {allowed, retry}
"""


def redis_key(principal: Principal, bucket: Bucket) -> str:
    """`loraplane:ratelimit:<key name>` for completions (as before feedback had a bucket),
    `loraplane:ratelimit:feedback:<key name>` for feedback (key names never hold a colon)."""
    return KEY_PREFIX + (principal.name if bucket == "requests" else f"{bucket}:{principal.name}")


class Limiter(Protocol):
    async def take(self, principal: Principal, bucket: Bucket = "requests") -> None: ...

    async def close(self) -> None: ...


class LocalLimiter:
    def __init__(self) -> None:
        self._bucket = RateLimiter(time.monotonic)

    async def take(self, principal: Principal, bucket: Bucket = "requests") -> None:
        self._bucket.take(principal, bucket)

    async def close(self) -> None:
        return None


class RedisLimiter:
    def __init__(self, cfg: RateLimitConfig, url: str, metrics: GatewayMetrics):
        self.cfg, self.metrics = cfg, metrics
        self.client = redis.Redis.from_url(
            url, socket_timeout=cfg.redis_timeout_s, socket_connect_timeout=cfg.redis_timeout_s
        )
        self._script = self.client.register_script(TOKEN_BUCKET)

    async def take(self, principal: Principal, bucket: Bucket = "requests") -> None:
        limit = principal.rate_limit_per_minute
        if limit <= 0:
            return
        try:
            allowed, retry_after = await self._script(keys=[redis_key(principal, bucket)], args=[limit])
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.ratelimit_errors.inc()
            if self.cfg.on_redis_error == "open":
                return
            raise Overloaded(
                f"the rate-limit store is unreachable ({type(exc).__name__}); retry shortly",
                retry_after_s=1,
            ) from None
        if not allowed:
            raise RateLimited(
                f"key {principal.name!r} is over its limit of {limit} {bucket} per minute "
                f"(shared by every gateway replica); retry after {retry_after} s",
                retry_after_s=max(1, int(retry_after)),
            )

    async def close(self) -> None:
        await self.client.aclose()


def make_limiter(cfg: RateLimitConfig, metrics: GatewayMetrics) -> Limiter:
    return RedisLimiter(cfg, cfg.redis_url, metrics) if cfg.redis_url else LocalLimiter()
