"""The engines behind the gateway, seen only over HTTP.

Routes by adapter affinity (prefer an engine that already holds the adapter), keeps at most
`max_resident` adapters per engine (unloading the least recently used), health-checks the
engines, and re-loads an engine's adapters when it comes back after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.errors import AdapterRejected, EngineUnavailable
from serving.metrics import GatewayMetrics
from serving.registry import AdapterRef


@dataclass
class Engine:
    index: int
    url: str
    healthy: bool = True
    down_until: float = 0.0  # a failed engine is not re-admitted by /health before this (monotonic)
    in_flight: int = 0
    loaded: OrderedDict[str, AdapterRef] = field(default_factory=OrderedDict)  # LRU order, newest last
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.index)


class EngineLease:
    """One upstream call counted on an engine until release() (idempotent); also a context manager.
    The proxy takes one for every call, streamed or not, from the engine's pick until the answer was
    read or the stream ended: `candidates` orders by these counts."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.released = False
        engine.in_flight += 1

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.engine.in_flight -= 1

    def __enter__(self) -> EngineLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class EnginePool:
    def __init__(
        self,
        urls: list[str],
        engine_adapters_dir: Path,
        max_resident: int,
        client: httpx.AsyncClient,
        metrics: GatewayMetrics,
    ):
        self.engines = [Engine(i, url.rstrip("/")) for i, url in enumerate(urls)]
        self.engine_adapters_dir = engine_adapters_dir
        self.max_resident = max_resident
        self.client = client
        self.metrics = metrics
        self.cooldown_s = 5.0  # an engine that failed a request stays out this long, even if /health is fine
        for engine in self.engines:
            metrics.engine_healthy.labels(engine.label).set(1)

    def candidates(self, lora_key: str | None) -> list[Engine]:
        """Healthy engines, those holding the adapter first, then the least busy."""
        healthy = [e for e in self.engines if e.healthy]
        if not healthy:
            raise EngineUnavailable(
                "the engine is unavailable: no healthy vLLM engine behind the gateway; "
                "retry shortly or check the engine logs",
                code="engine_unavailable",
            )
        return sorted(healthy, key=lambda e: (lora_key not in e.loaded if lora_key else False, e.in_flight))

    def lease(self, engine: Engine) -> EngineLease:
        """Count a call on `engine` (least-busy routing) until the lease is released."""
        return EngineLease(engine)

    def forget(self, engine: Engine, ref: AdapterRef) -> None:
        """The engine no longer holds `ref` (it answered 404 for it, e.g. after a restart): the next
        request loads it again."""
        engine.loaded.pop(ref.key, None)

    def holders(self, key: str) -> list[int]:
        """Indexes of the engines that hold adapter `key`."""
        return [e.index for e in self.engines if key in e.loaded]

    def mark_down(self, engine: Engine, kind: str) -> None:
        engine.healthy = False
        # A failed request keeps the engine out for a while even if /health says fine; a failed
        # health check lets it back as soon as /health answers again.
        engine.down_until = time.monotonic() + (0.0 if kind == "health" else self.cooldown_s)
        self.metrics.engine_healthy.labels(engine.label).set(0)
        self.metrics.upstream_errors.labels(engine.label, kind).inc()

    async def ensure_loaded(self, engine: Engine, ref: AdapterRef) -> None:
        if ref.key in engine.loaded:
            engine.loaded.move_to_end(ref.key)
            return
        lock = engine.locks.setdefault(ref.key, asyncio.Lock())
        async with lock:
            if ref.key in engine.loaded:
                return
            while len(engine.loaded) >= self.max_resident:
                await self.unload(engine, next(iter(engine.loaded)))
            await self._load(engine, ref)

    async def _load(self, engine: Engine, ref: AdapterRef) -> None:
        path = self.engine_adapters_dir / ref.name / ref.version
        started = time.perf_counter()
        try:
            resp = await self.client.post(
                f"{engine.url}/v1/load_lora_adapter", json={"lora_name": ref.key, "lora_path": str(path)}
            )
        except httpx.HTTPError as exc:
            self.metrics.adapter_loads.labels(ref.key, "engine_error").inc()
            raise EngineUnavailable(f"engine {engine.index} did not answer the adapter load: {exc!r}") from exc
        if resp.status_code != 200 and "already been loaded" not in resp.text:
            # Any answer (a 500 included) is about this adapter: a 422 for it, the engine stays in.
            self.metrics.adapter_loads.labels(ref.key, "rejected").inc()
            raise AdapterRejected(
                f"engine {engine.index} refused adapter {ref.key} ({resp.status_code}): {resp.text[:300]}"
            )
        self.metrics.adapter_loads.labels(ref.key, "ok").inc()
        self.metrics.adapter_load_duration.labels(ref.key).observe(time.perf_counter() - started)
        engine.loaded[ref.key] = ref

    async def unload(self, engine: Engine, key: str) -> None:
        engine.loaded.pop(key, None)
        self.metrics.adapter_unloads.labels(key).inc()
        try:
            await self.client.post(f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": key})
        except httpx.HTTPError:
            self.mark_down(engine, "unload")

    async def unload_everywhere(self, key: str) -> int:
        holders = [e for e in self.engines if key in e.loaded]
        for engine in holders:
            await self.unload(engine, key)
        return len(holders)

    async def check_health(self) -> None:
        for engine in self.engines:
            try:
                ok = (await self.client.get(f"{engine.url}/health", timeout=2.0)).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and not engine.healthy and time.monotonic() >= engine.down_until:
                await self._recover(engine)
            elif not ok and engine.healthy:
                self.mark_down(engine, "health")

    async def _recover(self, engine: Engine) -> None:
        """An engine that comes back (restarted) has lost its adapters: load them again."""
        previous = list(engine.loaded.values())
        engine.loaded.clear()
        engine.healthy = True
        self.metrics.engine_healthy.labels(engine.label).set(1)
        for ref in previous:
            try:
                await self._load(engine, ref)
            except (EngineUnavailable, AdapterRejected):
                continue

    async def health_loop(self, interval_s: float = 2.0) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(interval_s)
