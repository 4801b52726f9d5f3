"""Per-key daily token budgets, enforced by every gateway replica (docs/usage.md).

A key's `budgets` (auth.keys[].budgets) cap the tokens (prompt + completion) it may use per UTC
day: `tokens_per_day` on all models together, `per_model` on one model (the name the client asked
for, without a version: an adapter, experiment or base name). The request path calls two things:

    await budgets.check(principal.name, model)   # before admission: 429 BudgetExceeded when spent
    Call(..., log=budgets.log)                   # after the answer: counts its tokens, then logs it

Where usage is counted (`budgets.redis_url`, else `ratelimit.redis_url`, else the store):
- Redis/Valkey: one counter per key, day and model plus one for all models, INCRBY after each
  answer; every replica reads and adds to the same counters (they expire two days later).
- the control-plane store: the daily usage table (serving/store/usage.py) that the request-log
  writer fills, read per key through a cache of `budgets.store_cache_s`, plus the tokens this
  replica answered since that read. Other replicas' answers show after their writer's next
  batch and this cache: a store-backed budget is shared, but later than a Redis one.

Counting happens after the answer, so a request admitted under the budget may overshoot it by its
own answer (and every other request in flight at that moment by theirs). A budget store that is
down or slower than `budgets.timeout_s` lets the request go on: loraplane_budget_errors_total
counts the checks and counts that failed, loraplane_budget_uncounted_tokens_total the tokens that
were never counted (the gap).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from serving.config import KeyBudgets, ServingConfig
from serving.errors import BudgetExceeded, ServingError
from serving.metrics import GatewayMetrics
from serving.store import RequestRecord, Store
from serving.store.usage import utc_day

log = logging.getLogger("loraplane.gateway")
ALL = "*"  # the counter of a key's tokens on all models
REDIS_PREFIX = "loraplane:budget:"
REDIS_TTL_S = 2 * 86400  # a day's counters outlive the day they count


def next_midnight(now: float) -> float:
    """The next UTC midnight after `now` (POSIX seconds): when today's budgets reset."""
    return (math.floor(now / 86400) + 1) * 86400.0


class StoreReadFailed(Exception):
    """The store-backed counter could not read a key's usage (its cause says why)."""


# A budget store that fails in any of these ways lets the request go on (counted).
STORE_ERRORS = (RedisError, OSError, TimeoutError, asyncio.TimeoutError, ServingError, StoreReadFailed)


class UsageCounter(Protocol):
    """Tokens per (key, day, model), shared by the replicas; `ALL` is the key's total."""

    async def used(self, key: str, day: str, model: str) -> tuple[int, int]: ...  # (model's, all models')

    async def add(self, key: str, day: str, model: str, tokens: int) -> None: ...

    async def close(self) -> None: ...


class RedisCounter:
    def __init__(self, url: str, timeout_s: float):
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    @staticmethod
    def name(key: str, day: str, model: str) -> str:
        return f"{REDIS_PREFIX}{day}:{key}:{model}"  # key names hold no colon (KEY_NAME_RE)

    async def used(self, key: str, day: str, model: str) -> tuple[int, int]:
        mine, total = await self.client.mget(self.name(key, day, model), self.name(key, day, ALL))
        return int(mine or 0), int(total or 0)

    async def add(self, key: str, day: str, model: str, tokens: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for counter in (self.name(key, day, model), self.name(key, day, ALL)):
                pipe.incrby(counter, tokens)
                pipe.expire(counter, REDIS_TTL_S)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class StoreCounter:
    """The store's daily usage per key, read at most every `cache_s` (one read in flight per key),
    plus what this replica counted since. A failed read is remembered for `cache_s` too: the checks
    meanwhile fail at once (counted, the requests go on) instead of each waiting on the database."""

    def __init__(self, store: Store, cache_s: float, clock: Callable[[], float] = time.monotonic):
        self.store, self.cache_s, self.clock = store, cache_s, clock
        # (key, day) -> (read at, {model: tokens}, the read's error or None)
        self._read: dict[tuple[str, str], tuple[float, dict[str, int], BaseException | None]] = {}
        self._since: dict[tuple[str, str], dict[str, int]] = {}  # tokens counted here since that read
        self._reading: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def used(self, key: str, day: str, model: str) -> tuple[int, int]:
        cell = (key, day)
        cached = self._read.get(cell)
        if cached is None or self.clock() - cached[0] >= self.cache_s:
            task = self._reading.get(cell)
            if task is None:
                task = self._reading[cell] = asyncio.create_task(self._refresh(cell))
            await asyncio.shield(task)  # the caller's timeout never cancels the shared read
            cached = self._read[cell]
        _, read, error = cached
        if error is not None:
            raise StoreReadFailed(f"usage of key {key!r} unreadable: {error!r}") from error
        since = self._since.get(cell, {})
        tokens = {m: read.get(m, 0) + since.get(m, 0) for m in {*read, *since}}
        return tokens.get(model, 0), sum(tokens.values())

    async def _refresh(self, cell: tuple[str, str]) -> None:
        try:
            fresh, error = await asyncio.to_thread(self.store.key_tokens_on, *cell), None
        except Exception as exc:  # StoreUnavailable, or anything else: the request goes on, counted
            fresh, error = {}, exc
        finally:
            self._reading.pop(cell, None)
        self._read[cell] = (self.clock(), fresh, error)
        if error is None:
            self._since.pop(cell, None)  # the fresh read holds what the writer wrote of them

    async def add(self, key: str, day: str, model: str, tokens: int) -> None:
        mine = self._since.setdefault((key, day), {})
        mine[model] = mine.get(model, 0) + tokens

    async def close(self) -> None:
        return None


class Budgets:
    """The keys' budgets and the counter they are checked against (None: no key has a budget)."""

    def __init__(
        self, cfg: ServingConfig, store: Store, metrics: GatewayMetrics, log_request: Callable[[RequestRecord], None]
    ):
        self.timeout_s = cfg.budgets.timeout_s
        self.metrics = metrics
        self.log_request = log_request
        self.limits: dict[str, KeyBudgets] = {
            k.name: k.budgets for k in cfg.auth.keys if k.budgets.tokens_per_day or k.budgets.per_model
        }
        url = cfg.budgets.redis_url or cfg.ratelimit.redis_url
        self.counter: UsageCounter | None = None
        if self.limits:
            self.counter = RedisCounter(url, self.timeout_s) if url else StoreCounter(store, cfg.budgets.store_cache_s)
        self._counting: set[asyncio.Task[None]] = set()

    async def check(self, key: str, model: str) -> None:
        """Refuse (BudgetExceeded) when `key`'s budget on `model`, or on all models, is spent today."""
        limits = self.limits.get(key)
        if limits is None or self.counter is None:
            return
        model = model.split("@")[0]
        now = time.time()
        try:
            mine, total = await asyncio.wait_for(self.counter.used(key, utc_day(now), model), self.timeout_s)
        except STORE_ERRORS as exc:
            self.metrics.budget_errors.labels("check").inc()
            log.warning("budget check for key %r not made, the request goes on: %r", key, exc)
            return
        per_model = limits.per_model.get(model)
        if per_model is not None and mine >= per_model:
            self._refuse(key, model, per_model, mine, now)
        if limits.tokens_per_day is not None and total >= limits.tokens_per_day:
            self._refuse(key, "all", limits.tokens_per_day, total, now)

    def _refuse(self, key: str, budget: str, limit: int, used: int, now: float) -> None:
        self.metrics.budget_refusals.labels(key, budget).inc()
        reset = next_midnight(now)
        when = dt.datetime.fromtimestamp(reset, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        scope = "all models" if budget == "all" else f"model {budget!r}"
        raise BudgetExceeded(
            f"key {key!r} has spent its budget of {limit} tokens per day on {scope} (budget {budget!r}: "
            f"{used} tokens used today, UTC); it resets at {when}; retry then or ask the operator to raise "
            f"auth.keys[{key}].budgets",
            retry_after_s=max(1, math.ceil(reset - now)),
        )

    def log(self, record: RequestRecord) -> None:
        """Count an answered call's tokens (per-key metric; the budget counter, in the background),
        then hand the record to the request log. Never blocks."""
        prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
        if prompt or completion:
            self.metrics.key_tokens.labels(record.key_name, record.model, "prompt").inc(prompt)
            self.metrics.key_tokens.labels(record.key_name, record.model, "completion").inc(completion)
            if record.key_name in self.limits:
                self._count(record.key_name, utc_day(record.created_at), record.model, prompt + completion)
        self.log_request(record)

    def _count(self, key: str, day: str, model: str, tokens: int) -> None:
        task = asyncio.get_running_loop().create_task(self._add(key, day, model, tokens))
        self._counting.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._counting.discard)

    async def _add(self, key: str, day: str, model: str, tokens: int) -> None:
        assert self.counter is not None
        try:
            await asyncio.wait_for(self.counter.add(key, day, model, tokens), self.timeout_s * 4)
        except STORE_ERRORS as exc:
            self.metrics.budget_errors.labels("count").inc()
            self.metrics.budget_uncounted_tokens.inc(tokens)
            log.warning("budget: %d tokens of key %r not counted: %r", tokens, key, exc)

    async def close(self) -> None:
        if self._counting:
            await asyncio.wait(self._counting, timeout=self.timeout_s * 4)
        if self.counter is not None:
            await self.counter.close()
