"""Every change of a rollout, by the evaluator or by a person, goes through `apply` (one transition
function, as Flagger's one rollback path): start, advance, hold, promote, roll back, pause, resume.

`transition` says what an outcome writes (state, step, weights, stable pointer); `apply` writes it
as one compare-and-set on the rollout's revision (serving/store/store.py update_rollout), with the
evaluator's lease as a fence. A person's action re-reads and retries when the evaluator wrote in
between (their intent does not depend on the numbers); an evaluator decision is never retried: it
was made on numbers that are now stale, and the next tick decides again.

Rolling back a promoted rollout restores the control as stable (the store refuses it, naming why,
when the pointer was moved on since or another rollout of the adapter is active). Starting checks
the request (versions exist in the registry -- done by the caller, which owns the registry --,
candidate differs from control, the spec is valid); the store refuses a second active rollout on
one adapter (409).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from serving.errors import BadRequest, Conflict, NotFound
from serving.rollouts.policy import RolloutSpec, State, manual_transition
from serving.store import REVISION_CHANGED, Lease, RolloutRecord, Store
from serving.store.shadow import SHADOW_STEP

MANUAL_RETRIES = 5  # a person's action re-reads this often when the evaluator keeps writing in between


def version_of(target: str) -> str:
    return target.partition("@")[2]


def new_rollout(
    name: str, candidate: str, control: str, spec: RolloutSpec, capture: str, now: float, shadow: float | None = None
) -> RolloutRecord:
    """The record of a new rollout at its first step, or, with `shadow` (% of the control's requests
    mirrored), in its shadow stage: step SHADOW_STEP, the candidate at 0% (rollouts/shadow.py)."""
    adapter, _, _ = candidate.partition("@")
    if control.partition("@")[0] != adapter:
        raise BadRequest(f"control {control!r} is not a version of {adapter!r}; give --control {adapter}@vM")
    if candidate == control:
        raise BadRequest(f"candidate and control are both {candidate!r}; roll out another version", param="candidate")
    candidate_pct, control_pct = spec.weights(0)
    step, reason = 0, f"started at {candidate_pct}% for {candidate}"
    if shadow is not None:
        candidate_pct, control_pct, step = 0, 100, SHADOW_STEP
        spec = replace(spec, stages=2)  # the shadow stage's comparisons take their share of alpha
        reason = f"started in shadow: {shadow:g}% of {control}'s requests mirrored to {candidate}, never returned"
    config = {**spec.to_json(), "capture": capture, "step_started_at": now, "ttft_threshold_s": None, "shadow": shadow}
    return RolloutRecord(
        name=name,
        adapter=adapter,
        candidate=candidate,
        control=control,
        state=State.RUNNING.value,
        weights={candidate: candidate_pct, control: control_pct},
        config=config,
        step=step,
        reason=reason,
    )


@dataclass(frozen=True)
class Transition:
    """What one outcome writes: rollout fields, and where the stable pointer moves (if it does)."""

    changes: dict[str, Any] = field(default_factory=dict)
    set_stable: str | None = None
    stable_from: str | None = None  # the version the pointer must name before it moves


def transition(rollout: RolloutRecord, outcome: str, step_index: int | None = None) -> Transition:
    """The one table of rollout changes. `outcome`: advance (to `step_index`), hold, promote,
    rollback, pause, resume. ValueError for an outcome the rollout's state does not allow."""
    c, s = rollout.candidate, rollout.control
    state = State(rollout.state)
    if outcome in ("advance", "hold") and state is not State.RUNNING:
        raise ValueError(f"cannot {outcome} a rollout that is {state.value}")
    if outcome == "hold":
        return Transition()
    if outcome == "advance":
        assert step_index is not None
        candidate, control = RolloutSpec.from_json(rollout.config).weights(step_index)
        return Transition({"step": step_index, "weights": {c: candidate, s: control}})
    if outcome == "rollback" and state is State.PROMOTED:  # undo the promotion: control is stable again
        changes = {"state": State.ROLLED_BACK.value, "weights": {c: 0, s: 100}}
        return Transition(changes, set_stable=version_of(s), stable_from=version_of(c))
    target = manual_transition(state, outcome)
    if target is State.PROMOTED:
        last = len(rollout.config["steps"]) - 1
        return Transition({"state": target.value, "step": last, "weights": {c: 100, s: 0}}, set_stable=version_of(c))
    if target is State.ROLLED_BACK:
        return Transition({"state": target.value, "weights": {c: 0, s: 100}})
    return Transition({"state": target.value})


def apply(
    store: Store,
    rollout: RolloutRecord,
    outcome: str,
    *,
    actor: str,
    reason: str | None,
    numbers: dict[str, Any] | None = None,
    step_index: int | None = None,
    fence: Lease | None = None,
    **extra: Any,
) -> RolloutRecord:
    """Write `outcome` on `rollout` as read (compare-and-set on its revision; `fence`: the lease it
    was decided under). `extra`: more fields to write (evaluated_at, config). Conflict when the
    rollout or the lease moved on: nothing is written."""
    try:
        change = transition(rollout, outcome, step_index)
    except ValueError as exc:
        raise Conflict(f"rollout {rollout.name!r}: {exc}", param="action") from None
    return store.update_rollout(
        rollout.name,
        expect_revision=rollout.revision,
        actor=actor,
        action=f"rollout.{outcome}",
        reason=reason,
        numbers=numbers,
        set_stable=change.set_stable,
        stable_from=change.stable_from,
        fence=fence,
        **{**change.changes, **extra},
    )


def manual_action(store: Store, name: str, action: str, actor: str, reason: str | None) -> RolloutRecord:
    """A person's pause/resume/promote/rollback, audited. 404 unknown rollout, 409 when its state
    forbids it (read again after every write that landed in between)."""
    for _ in range(MANUAL_RETRIES):
        rollout = store.get_rollout(name)
        if rollout is None:
            raise NotFound(f"rollout {name!r} does not exist; `loraplane rollout status` lists them", param="name")
        try:
            target = transition(rollout, action).changes.get("state", rollout.state)
        except ValueError as exc:
            raise Conflict(f"rollout {name!r}: {exc}", param="action") from None
        numbers = {"from": rollout.state, "to": target}
        try:
            return apply(store, rollout, action, actor=actor, reason=reason or f"{action} by {actor}", numbers=numbers)
        except Conflict as exc:
            if exc.code != REVISION_CHANGED:
                raise
    raise Conflict(f"rollout {name!r} kept changing while {action} was tried; retry", param="name")
