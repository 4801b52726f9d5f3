"""Mirroring for a rollout's shadow stage (serving/rollouts/shadow.py): a share of the stable
version's requests is sent again to the candidate, after the live request was forwarded, and the
candidate's answer is logged on its own row (excluded="shadow", step SHADOW_STEP) -- never returned.

    route -> resolve -> forward (the user's answer) -> mirror.after(call): maybe a background task
                                                        that runs the same body on the candidate

Bounded, and yields to live requests: a mirror takes no admission lease and no upstream slot, so
it can never make a live request wait or be refused; it starts only while live requests plus
mirrors in flight are below `rollouts.shadow_max_in_flight_share` of `gateway.max_in_flight`, and
is otherwise skipped and counted (loraplane_shadow_requests_total{outcome="dropped"}).
A mirrored stream is read to its end so its TTFT, errors and (with `capture: bodies`) its text are
logged exactly as a live answer's are (recorder.Call); its row is gradable by its id like any other,
and the configured graders score it like a live answer (their scores drive the shadow stage's
grader guards: store/shadow.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from serving.errors import ServingError
from serving.gateway.recorder import Call, FailedBeforeFirstByte, failure_kind
from serving.gateway.stream import RelayResponse
from serving.rollouts.shadow import SHADOW_STEP
from serving.store.shadow import SHADOW

if TYPE_CHECKING:
    from serving.gateway.state import RequestPath

log = logging.getLogger("loraplane.shadow")


class ShadowMirror:
    """Owns the mirrors in flight (a count and their tasks) of one gateway process."""

    def __init__(self, share: float, rng: Callable[[], float] = random.random):
        self.share = share  # of gateway.max_in_flight that live requests plus mirrors may fill
        self.rng = rng
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def after(self, path: RequestPath, call: Call) -> None:
        """Called once the live request was forwarded: mirror it to the candidate when it was assigned
        in its rollout's shadow stage, the rollout still runs, the draw says so, and the gateway has
        room. Never raises, never waits. A request assigned in the shadow stage is mirrored (at that
        step) even when the rollout moved to its canary while it was being answered: otherwise every
        request in flight at the advance would be a live answer without a pair."""
        target = call.target
        if target.rollout is None or target.step != SHADOW_STEP or call.excluded is not None:
            return
        rollout = path.control.snapshot.rollouts.get(target.rollout)
        if rollout is None or rollout.state != "running":
            return
        if self.rng() * 100 >= float(rollout.config.get("shadow") or 0):
            return
        counter = path.metrics.shadow_requests
        limit = self.share * path.cfg.gateway.max_in_flight
        if path.admission.in_flight + self.in_flight >= limit:
            counter.labels(rollout.name, "dropped").inc()
            return
        try:  # in memory; the candidate was validated when the rollout started
            ref = path.resolver.resolve(rollout.candidate, "", None).ref
        except ServingError as exc:
            counter.labels(rollout.name, "dropped").inc()
            log.warning("shadow: cannot mirror to %s: %s", rollout.candidate, exc)
            return
        counter.labels(rollout.name, "mirrored").inc()
        mirror = Call(
            call.spec,
            {**call.body, "model": rollout.candidate},
            replace(target, ref=ref, upstream_model=rollout.candidate, pinned=False),
            time.perf_counter(),  # its TTFT counts from when the mirror started
            path.metrics,
            call.log,
            key_name=call.key_name,
            unit=call.unit,
            excluded=SHADOW,
            grade=call.grade,  # graders score mirrored answers: the shadow stage's grader guards read them
            mirror_of=call.response_id,  # the pair the shadow stage compares (store/shadow.py)
        )
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(path, mirror))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1

    async def _run(self, path: RequestPath, call: Call) -> None:
        try:
            response = await path.proxy.try_once(call)  # no fallback: the candidate's answer is what is measured
            if isinstance(response, RelayResponse):  # read the stream to its end: that logs it
                try:
                    async for _ in response.relay.events():
                        pass
                finally:
                    response.relay.close()
        except FailedBeforeFirstByte:
            pass  # logged on the mirror's own row
        except Exception as exc:
            log.warning("shadow mirror to %s failed: %r", call.target.upstream_model, exc)
            call.finish(503, failure_kind(exc))

    async def close(self) -> None:
        """Cancel the mirrors in flight (gateway shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
