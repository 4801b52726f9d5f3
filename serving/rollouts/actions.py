"""What people do to rollouts (the admin API calls these): start, pause, resume, promote, roll back.

Each is one audited store transaction. Starting checks the request (versions exist in the
registry -- done by the caller, which owns the registry --, candidate differs from control, the
spec is valid); the store refuses a second active rollout on one adapter (409).
"""

from __future__ import annotations

from typing import Any

from serving.errors import BadRequest, Conflict, NotFound
from serving.rollouts.policy import RolloutSpec, State, manual_transition
from serving.store import RolloutRecord, Store


def version_of(target: str) -> str:
    return target.partition("@")[2]


def new_rollout(name: str, candidate: str, control: str, spec: RolloutSpec, capture: str, now: float) -> RolloutRecord:
    adapter, _, _ = candidate.partition("@")
    if control.partition("@")[0] != adapter:
        raise BadRequest(f"control {control!r} is not a version of {adapter!r}; give --control {adapter}@vM")
    if candidate == control:
        raise BadRequest(f"candidate and control are both {candidate!r}; roll out another version", param="candidate")
    candidate_pct, control_pct = spec.weights(0)
    config = {**spec.to_json(), "capture": capture, "step_started_at": now, "ttft_threshold_s": None}
    return RolloutRecord(
        name=name,
        adapter=adapter,
        candidate=candidate,
        control=control,
        state=State.RUNNING.value,
        weights={candidate: candidate_pct, control: control_pct},
        config=config,
        step=0,
        reason=f"started at {candidate_pct}% for {candidate}",
    )


def manual_action(store: Store, name: str, action: str, actor: str, reason: str | None) -> RolloutRecord:
    """A person's pause/resume/promote/rollback, audited. 404 unknown rollout, 409 when its state forbids it."""
    rollout = store.get_rollout(name)
    if rollout is None:
        raise NotFound(f"rollout {name!r} does not exist; `loraplane rollout status` lists them", param="name")
    try:
        target = manual_transition(State(rollout.state), action)
    except ValueError as exc:
        raise Conflict(f"rollout {name!r}: {exc}", param="action") from None
    c, s = rollout.candidate, rollout.control
    changes: dict[str, Any] = {"state": target.value}
    if target is State.PROMOTED:
        changes.update(weights={c: 100, s: 0}, step=len(rollout.config["steps"]) - 1)
    elif target is State.ROLLED_BACK:
        changes.update(weights={c: 0, s: 100})
    return store.update_rollout(
        name,
        actor=actor,
        action=f"rollout.{action}",
        reason=reason or f"{action} by {actor}",
        numbers={"from": rollout.state, "to": target.value},
        set_stable=version_of(c) if target is State.PROMOTED else None,
        **changes,
    )
