"""The rollout evaluator: one per deployment at a time, chosen by a lease in the control-plane store.

Every gateway replica runs `Evaluator.run`; each tick (rollouts.tick_s) it tries to take or renew
the lease "rollout-evaluator" for rollouts.lease_s. The holder evaluates every running rollout
whose interval has passed: it reads the rollout's per-unit aggregates (report.read_rollout: per
variant, step and user, computed in SQL, never request rows), builds the report
(report.py), asks the policy (policy.decide) and writes the outcome -- advance, hold, promote (the
stable pointer moves in the same transaction) or rollback -- with the report as the audit record's
numbers. When the holder dies its lease lapses and another replica takes over within lease_s.

Database lost: the tick fails, decisions pause (every replica reports its rollouts as `paused`
with the reason), serving goes on from the last snapshot; the next tick that reaches the
database resumes. Nothing is decided without the database, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from serving.config import RolloutsConfig
from serving.metrics import GatewayMetrics
from serving.rollouts.actions import version_of
from serving.rollouts.policy import Decision, RolloutSpec, State, decide
from serving.rollouts.report import read_rollout
from serving.store import ControlSnapshot, RolloutRecord, Store

log = logging.getLogger("loraplane.rollouts")
LEASE = "rollout-evaluator"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def decision_changes(rollout: RolloutRecord, spec: RolloutSpec, d: Decision, now: float) -> dict[str, Any]:
    """The rollout fields a decision writes (state, step, weights, config); the reason goes separately."""
    changes: dict[str, Any] = {"evaluated_at": now}
    c, s = rollout.candidate, rollout.control
    if d.outcome == "advance":
        candidate, control = spec.weights(d.step_index)
        changes.update(step=d.step_index, weights={c: candidate, s: control})
        changes["config"] = {**rollout.config, "step_started_at": now}
    elif d.outcome == "promote":
        changes.update(state=State.PROMOTED.value, step=len(spec.steps) - 1, weights={c: 100, s: 0})
    elif d.outcome == "rollback":
        changes.update(state=State.ROLLED_BACK.value, weights={c: 0, s: 100})
    return changes


class Evaluator:
    def __init__(
        self,
        store: Store,
        cfg: RolloutsConfig,
        metrics: GatewayMetrics,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.cfg = cfg
        self.metrics = metrics
        self.holder = holder or holder_id()
        self.clock = clock
        self.leader = False
        self.paused_reason: str | None = None  # set while the database cannot be reached

    # --- one round (synchronous: the async loop runs it in a thread) ----------------------------

    def tick(self) -> list[tuple[str, Decision]]:
        now = self.clock()
        try:
            self.leader = self.store.acquire_lease(LEASE, self.holder, self.cfg.lease_s)
            decisions = []
            if self.leader:
                for rollout in self.store.list_rollouts():
                    due = rollout.evaluated_at is None or now - rollout.evaluated_at >= rollout.config["interval_s"]
                    if rollout.state == State.RUNNING.value and due:
                        decisions.append((rollout.name, self.evaluate(rollout, now)))
        except Exception as exc:  # database down or failing: decide nothing, say why
            self._pause(exc)
            return []
        if self.paused_reason is not None:
            log.warning("control-plane database reachable again: rollout decisions resume")
            self.paused_reason = None
        return decisions

    def evaluate(self, rollout: RolloutRecord, now: float) -> Decision:
        spec = RolloutSpec.from_json(rollout.config)
        read = read_rollout(self.store, rollout)  # per-unit aggregates in SQL, never request rows
        d = decide(spec, rollout.step, read.step_counts, read.verdicts, read.control_units)
        report, threshold = read.report, read.threshold
        changes = decision_changes(rollout, spec, d, now)
        if threshold is not None and rollout.config.get("ttft_threshold_s") is None:
            changes["config"] = {**changes.get("config", rollout.config), "ttft_threshold_s": threshold}
        self.store.update_rollout(
            rollout.name,
            actor=f"evaluator:{self.holder}",
            action=f"rollout.{d.outcome}",
            reason=d.reason,
            numbers={"outcome": d.outcome, "step_index": d.step_index, "report": report},
            set_stable=version_of(rollout.candidate) if d.outcome == "promote" else None,
            **changes,
        )
        self.metrics.rollout_decisions.labels(rollout.name, d.outcome).inc()
        log.info("rollout %s: %s (%s)", rollout.name, d.outcome, d.reason)
        return d

    def _pause(self, exc: Exception) -> None:
        reason = (
            f"decisions paused: the control-plane database is unreachable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); serving continues on the last weights"
        )
        if self.paused_reason is None:
            log.warning("rollout %s", reason)
        self.paused_reason = reason
        self.leader = False

    def release(self) -> None:
        try:
            self.store.release_lease(LEASE, self.holder)
        except Exception as exc:  # shutting down without the database: the lease lapses by itself
            log.warning("could not release the evaluator lease: %s", exc)

    # --- what every replica reports ----------------------------------------------------------

    def effective_state(self, rollout: RolloutRecord) -> tuple[str, str | None]:
        """(state, reason) as this replica sees it: running rollouts are paused while the database is down."""
        if self.paused_reason is not None and rollout.state == State.RUNNING.value:
            return State.PAUSED.value, self.paused_reason
        return rollout.state, rollout.reason

    def publish(self, snapshot: ControlSnapshot, counted_pause: set[str]) -> None:
        """Gauges for every rollout in this replica's snapshot; a pause is counted once per rollout."""
        for rollout in snapshot.rollouts.values():
            state, _ = self.effective_state(rollout)
            self.metrics.rollout_step_percent.labels(rollout.name).set(rollout.weights.get(rollout.candidate, 0))
            for s in State:
                self.metrics.rollout_state.labels(rollout.name, s.value).set(1.0 if s.value == state else 0.0)
            paused_now = self.paused_reason is not None and rollout.state == State.RUNNING.value
            if paused_now and rollout.name not in counted_pause:
                self.metrics.rollout_decisions.labels(rollout.name, "pause").inc()
                counted_pause.add(rollout.name)
            elif not paused_now:
                counted_pause.discard(rollout.name)

    async def run(self, snapshot: Callable[[], ControlSnapshot], on_change: Callable[[], Awaitable[None]]) -> None:
        """Forever: tick, let the control plane reload after a decision, publish gauges."""
        counted_pause: set[str] = set()
        while True:
            decisions = await asyncio.to_thread(self.tick)
            if decisions:
                try:
                    await on_change()
                except Exception as exc:
                    log.warning("snapshot reload after a rollout decision failed: %s", exc)
            self.publish(snapshot(), counted_pause)
            await asyncio.sleep(self.cfg.tick_s)
