"""The gateway's view of the control-plane store: a snapshot it polls, the writes admins make,
and the request log / feedback writer.

Every control-plane write of the gateway's admin API (experiments, stable pointers, rollouts
started or acted on by hand) goes through a ControlPlane method; the store translates database
failures (StoreUnavailable, Conflict), and the method then reloads this replica's snapshot.

Every replica polls the store's change counter every `store.poll_interval_s` and reloads the
snapshot (experiments, stable versions, rollouts) when it moved, so a change made through any
replica is served by all within 2 s. A replica whose database is down keeps serving from its
last snapshot. Store calls run in a thread (asyncio.to_thread): the event loop never waits on
the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from serving.config import ServingConfig
from serving.errors import Conflict, StoreUnavailable
from serving.gateway.experiments import Experiment, ExperimentTable
from serving.metrics import GatewayMetrics
from serving.registry import AdapterRegistry
from serving.rollouts.actions import manual_action
from serving.store import (
    ControlSnapshot,
    FeedbackJob,
    FeedbackRecord,
    RequestRecord,
    RolloutRecord,
    Store,
    StoreWriter,
)

log = logging.getLogger("loraplane.gateway")
EMPTY = ControlSnapshot(-1, {}, {}, {})


class ControlPlane:
    def __init__(self, cfg: ServingConfig, store: Store, registry: AdapterRegistry, metrics: GatewayMetrics):
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.snapshot = EMPTY
        self.experiments = ExperimentTable([])
        self.writer = StoreWriter(
            store,
            queue_size=cfg.store.log_queue_size,
            batch_size=cfg.store.log_batch_size,
            flush_interval_s=cfg.store.log_flush_interval_s,
            body_retention_s=cfg.store.body_retention_s,
            request_log_retention_s=cfg.store.request_log_retention_s,
            body_max_bytes=cfg.store.body_capture_max_bytes,
            on_drop=metrics.request_log_dropped.inc,
            on_reject=metrics.request_log_rejected.inc,
            on_body_skipped=metrics.request_log_bodies_skipped.inc,
            on_score_drop=metrics.grader_scores_unsaved.inc,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Seed the config file's experiments (the store's copy wins), load the first snapshot."""
        for experiment in self.cfg.experiments:
            try:
                self.check_experiment_name(experiment.name)
            except Conflict as exc:  # an adapter published under this name: serve the adapter, never crash-loop
                log.error("config experiment %r is not served: %s", experiment.name, exc.message)
                continue
            await asyncio.to_thread(
                self.store.seed_experiment, experiment.name, dict(experiment.variants), capture=experiment.capture
            )
        await self.refresh()
        self.writer.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.writer.stop)

    async def poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.store.poll_interval_s)
            try:
                await asyncio.to_thread(self.registry.refresh)  # the request path reads this snapshot
                version = await asyncio.to_thread(self.store.version)
                unrecorded = await asyncio.to_thread(self._unrecorded_names)  # reads that snapshot
                if version != self.snapshot.version or unrecorded:
                    await self.refresh()
            except Exception as exc:  # database down: keep serving from the last snapshot
                log.warning("store poll failed (serving from the last snapshot): %s", exc)

    def _unrecorded_names(self) -> list[str]:
        return [name for name in self.registry.names() if name not in self.snapshot.stable]

    async def refresh(self) -> None:
        self._install(await asyncio.to_thread(self._load))

    def _load(self) -> ControlSnapshot:
        """The store's snapshot, after recording a stable version for every name that has none yet
        (the first published version becomes stable; audited). Runs in a worker thread."""
        snapshot = self.store.snapshot()
        new_names = [name for name in self.registry.names() if name not in snapshot.stable]
        for name in new_names:
            self.store.ensure_stable(name, self.registry.versions(name)[0])
        return self.store.snapshot() if new_names else snapshot

    def _install(self, snapshot: ControlSnapshot) -> None:
        self.snapshot = snapshot
        self.experiments = ExperimentTable(
            [Experiment(e.name, dict(e.variants), e.capture) for e in snapshot.experiments.values()]
        )

    # --- reads on the request path (no I/O) ------------------------------------------------------

    def stable_version(self, name: str) -> str:
        """The stable version of `name`. A name published since the last poll has no pointer yet:
        its first version is the answer the next poll records."""
        version = self.snapshot.stable.get(name)
        return version if version is not None else self.registry.versions(name)[0]

    def check_experiment_name(self, name: str) -> None:
        if name == self.registry.base.name:
            raise Conflict(
                f"experiment name {name!r} clashes with the base model {name!r}; pick another name", param="name"
            )
        if self.registry.versions(name):
            raise Conflict(
                f"experiment name {name!r} clashes with adapter {name!r}; pick another name "
                f"(to split {name!r}'s own traffic, start a rollout)",
                param="name",
            )

    # --- writes (admin API) --------------------------------------------------------------------

    async def put_experiment(
        self, name: str, variants: dict[str, int], capture: str, actor: str, reason: str | None
    ) -> None:
        self.check_experiment_name(name)
        await self._write(self.store.put_experiment, name, variants, actor=actor, capture=capture, reason=reason)

    async def delete_experiment(self, name: str, actor: str, reason: str | None) -> None:
        await self._write(self.store.delete_experiment, name, actor=actor, reason=reason)

    async def promote(self, name: str, version: str, actor: str, reason: str | None) -> str | None:
        """Move the stable pointer by hand. 409 naming the rollout while the adapter has an active
        one: checked here on the snapshot, and again by the store inside the write's transaction
        (this replica's snapshot may not have seen a rollout just started through another)."""
        rollout = self.snapshot.active_rollout(name)
        if rollout is not None:
            raise Conflict(
                f"adapter {name!r} is in rollout {rollout.name!r} ({rollout.state}); "
                f"use `loraplane rollout promote {rollout.name}` or roll it back first",
                param="model",
            )
        return await self._write(self.store.set_stable, name, version, actor=actor, reason=reason)

    async def start_rollout(self, record: RolloutRecord, actor: str, reason: str | None) -> RolloutRecord:
        """Create `record` (audited); Conflict when the name exists or the adapter has an active rollout."""
        created: RolloutRecord = await self._write(self.store.create_rollout, record, actor=actor, reason=reason)
        return created

    async def rollout_action(self, name: str, action: str, actor: str, reason: str | None) -> RolloutRecord:
        """pause | resume | promote | rollback, by hand: one compare-and-set on the rollout (actions.py)."""
        record: RolloutRecord = await self._write(manual_action, self.store, name, action, actor, reason)
        return record

    async def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A store write off the event loop (the store turns database failures into serving errors),
        then this replica's snapshot reloads so the change is served here at once."""
        result = await asyncio.to_thread(fn, *args, **kwargs)
        await self.refresh()
        return result

    # --- request log and feedback --------------------------------------------------------------

    def log(self, record: RequestRecord) -> None:
        if self.cfg.store.request_log:
            self.writer.offer(record)

    async def feedback(self, job: FeedbackJob) -> FeedbackRecord:
        future = self.writer.submit_feedback(job)
        try:
            record = await asyncio.wait_for(asyncio.wrap_future(future), self.cfg.store.feedback_timeout_s)
        except asyncio.TimeoutError:
            waited = self.cfg.store.feedback_timeout_s
            raise StoreUnavailable(
                f"feedback was not saved within {waited} s: the database is slow or down; retry"
            ) from None
        self.metrics.feedback.labels(record.model, record.variant).inc()
        self.metrics.feedback_score.labels(record.model, record.variant).observe(record.score)
        return record
