"""The rollout evaluator: one per deployment at a time, chosen by a lease in the control-plane store.

Every gateway replica runs `Evaluator.run`; each tick (rollouts.tick_s) it tries to take or renew
the lease "rollout-evaluator" for rollouts.lease_s. The holder evaluates every running rollout
whose interval has passed: it reads the rollout's per-unit aggregates (report.read_rollout: per
variant, step and user, computed in SQL, never request rows), builds the report
(report.py), asks the policy (policy.decide) and writes the outcome -- advance, hold, promote (the
stable pointer moves in the same transaction) or rollback -- with the report as the audit record's
numbers. When the holder dies its lease lapses and another replica takes over within lease_s.

A decision is written through actions.apply as a compare-and-set on the revision the evaluation
read, fenced by the lease term it ran under: an admin action that landed meanwhile, or a lease
that lapsed during a slow evaluation (another replica may hold it now), makes the write a no-op
counted as outcome "refused"; the next tick decides again on fresh numbers.

Database lost: the tick fails, decisions pause (every replica reports its rollouts as `paused`
with the reason), serving goes on from the last snapshot; the next tick that reaches the
database resumes. Nothing is decided without the database, so nothing is lost.

One rollout that cannot be evaluated (a setting this replica's code cannot read, written by a newer
replica during a rolling upgrade; any other error that is not the database's) pauses that rollout
only: the leader reports it `paused` with the error, logs it, counts it (outcome "error"), and goes
on deciding the others; the next tick tries it again.
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

import sqlalchemy as sa

from serving.config import RolloutsConfig
from serving.errors import Conflict, StoreUnavailable
from serving.metrics import GatewayMetrics
from serving.rollouts.actions import apply
from serving.rollouts.policy import Decision, RolloutSpec, State, decide
from serving.rollouts.report import read_rollout
from serving.rollouts.shadow import carried_gain, decide_shadow, in_shadow
from serving.store import LEASE_LOST, REVISION_CHANGED, ControlSnapshot, Lease, RolloutRecord, Store

log = logging.getLogger("loraplane.rollouts")
LEASE = "rollout-evaluator"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def decision_fields(rollout: RolloutRecord, d: Decision, now: float, threshold: float | None) -> dict[str, Any]:
    """What an evaluation writes besides the transition itself (actions.transition): when it ran,
    when a new step started, the TTFT threshold once it is frozen, and a gain the shadow stage showed."""
    fields: dict[str, Any] = {"evaluated_at": now}
    config = dict(rollout.config)
    if d.outcome == "advance":
        config["step_started_at"] = now
    if d.gain_shown is not None:  # the shadow stage showed the gain: the canary's rule reads it
        config["gain_shown"] = d.gain_shown
    if threshold is not None and rollout.config.get("ttft_threshold_s") is None:
        config["ttft_threshold_s"] = threshold
    if config != rollout.config:
        fields["config"] = config
    return fields


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
        self.lease: Lease | None = None  # the term this replica's decisions are fenced by
        self.paused_reason: str | None = None  # set while the database cannot be reached
        self.failed: dict[str, str] = {}  # rollout name -> why its last evaluation failed (not the database)

    # --- one round (synchronous: the async loop runs it in a thread) ----------------------------

    def tick(self) -> list[tuple[str, Decision]]:
        now = self.clock()
        try:
            self._renew()
            decisions = []
            if not self.leader:
                self.failed.clear()  # the leader reports (and retries) the rollouts it cannot evaluate
            for rollout in self.store.list_rollouts() if self.leader else []:
                if rollout.state == State.RUNNING.value:
                    decision = self._evaluate_one(rollout, now)
                    if decision is not None:
                        decisions.append((rollout.name, decision))
        except Exception as exc:  # database down or failing: decide nothing, say why
            self._pause(exc)
            return []
        if self.paused_reason is not None:
            log.warning("control-plane database reachable again: rollout decisions resume")
            self.paused_reason = None
        return decisions

    def _evaluate_one(self, rollout: RolloutRecord, now: float) -> Decision | None:
        """evaluate() when due, with an error that is not the database's confined to this rollout."""
        try:
            interval_s = rollout.config["interval_s"]  # a setting this code cannot read fails here too
            if rollout.evaluated_at is not None and now - rollout.evaluated_at < interval_s:
                return None
            self._renew()  # a slow evaluation before this one must not let the lease lapse unseen
            decision = self.evaluate(rollout, now) if self.leader else None
        except (sa.exc.SQLAlchemyError, StoreUnavailable, OSError):
            raise  # the database: tick pauses every rollout
        except Exception as exc:
            reason = f"evaluation failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            if self.failed.get(rollout.name) != reason:
                log.exception("rollout %s: %s; the other rollouts go on", rollout.name, reason)
                self.metrics.rollout_decisions.labels(rollout.name, "error").inc()
            self.failed[rollout.name] = reason
            return None
        self.failed.pop(rollout.name, None)
        return decision

    def evaluate(self, rollout: RolloutRecord, now: float) -> Decision | None:
        spec = RolloutSpec.from_json(rollout.config)
        read = read_rollout(self.store, rollout)  # per-unit aggregates in SQL, never request rows
        if in_shadow(rollout):  # mirrored answers only: advance to the first canary step or roll back
            live = self.store.shadow_live_requests(rollout.name)
            d = decide_shadow(spec, read.step_counts, read.verdicts, live)
        else:
            last_compared = rollout.step == len(spec.steps) - 2  # only the last step promotes
            shown = carried_gain(self.store, rollout, spec) if last_compared else None
            d = decide(spec, rollout.step, read.step_counts, read.verdicts, read.control_units, shown)
        report, threshold = read.report, read.threshold
        return d if self._write(rollout, d, report, decision_fields(rollout, d, now, threshold)) else None

    def _write(self, rollout: RolloutRecord, d: Decision, report: dict, fields: dict[str, Any]) -> bool:
        """The decision as one compare-and-set fenced by this replica's lease; False (nothing written,
        counted as "refused") when the rollout changed meanwhile (an admin action, another evaluator)
        or the lease lapsed or moved on during the evaluation. Only written under a lease (tick holds one)."""
        try:
            if self.lease is None:
                raise Conflict(f"evaluator {self.holder!r} holds no lease; nothing decided", code=LEASE_LOST)
            apply(
                self.store,
                rollout,
                d.outcome,
                actor=f"evaluator:{self.holder}",
                reason=d.reason,
                numbers={"outcome": d.outcome, "step_index": d.step_index, "report": report},
                step_index=d.step_index,
                fence=self.lease,
                **fields,
            )
        except Conflict as exc:
            if exc.code not in (REVISION_CHANGED, LEASE_LOST):
                raise
            if exc.code == LEASE_LOST:
                self.leader, self.lease = False, None
            self.metrics.rollout_decisions.labels(rollout.name, "refused").inc()
            log.warning("rollout %s: %s not written: %s", rollout.name, d.outcome, exc.message)
            return False
        self.metrics.rollout_decisions.labels(rollout.name, d.outcome).inc()
        log.info("rollout %s: %s (%s)", rollout.name, d.outcome, d.reason)
        return True

    def _renew(self) -> None:
        self.lease = self.store.acquire_lease(LEASE, self.holder, self.cfg.lease_s)
        self.leader = self.lease is not None

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
        if rollout.name in self.failed and rollout.state == State.RUNNING.value:
            return State.PAUSED.value, f"decisions paused for this rollout: {self.failed[rollout.name]}"
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
