"""Admin API for rollouts (admin key when auth is on); `loraplane rollout ...` calls these.

POST /admin/rollouts/{name}                 start: {"candidate": "bot@v2", "control"?, "steps"?,
                                            "min_samples"?, "interval_s"?, "alpha"?, "guards"?,
                                            "promote_when"?, "method"?, "capture"?, "shadow"?}
                                            (shadow: % of the stable version's requests mirrored
                                            to the candidate before the first step: rollouts/shadow.py)
GET  /admin/rollouts                        every rollout (name, adapter, state, weights)
GET  /admin/rollouts/{name}                 state, step, weights, per-variant numbers, guards
POST /admin/rollouts/{name}/{action}        pause | resume | promote | rollback, {"reason"?}
                                            (rollback of a promoted rollout makes the control stable
                                            again; 409 saying why when it cannot: actions.py)
GET  /admin/rollouts/{name}/captures        captured bodies with their scores (for export;
                                            ?label_source=user|grader:NAME; train_opt_out keys left out)
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from serving.config import ADAPTER_NAME_RE
from serving.errors import BadRequest, NotFound, StoreUnavailable
from serving.gateway.admin import require_admin
from serving.gateway.exports import captures, check_label_source, opted_out_keys
from serving.gateway.state import GatewayState, StateDep
from serving.registry import parse_model_name
from serving.rollouts.actions import manual_action, new_rollout
from serving.rollouts.policy import MANUAL, GuardSpec
from serving.rollouts.report import finite, read_rollout
from serving.rollouts.shadow import shadow_percent
from serving.store import RolloutRecord
from serving.store.records import USER_SOURCE

rollouts = APIRouter(prefix="/admin/rollouts", dependencies=[Depends(require_admin)])
ACTOR = "admin"
SPEC_FIELDS = ("steps", "min_samples", "interval_s", "alpha", "promote_when", "method")


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A store call off the event loop (the store raises StoreUnavailable / Conflict, never SQLAlchemy's errors)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _target(state: GatewayState, value: Any, field: str) -> str:
    if not isinstance(value, str) or "@" not in value:
        raise BadRequest(f"`{field}` must be ADAPTER@vN, got {value!r}", param=field)
    name, version = parse_model_name(value)
    ref = state.registry.resolve_fresh(name, version)  # 404 naming the unknown adapter or version
    state.registry.validate(ref)  # 422 for a version that cannot be served
    return ref.key


def _guards(value: Any) -> tuple[GuardSpec, ...] | None:
    if value is None:
        return None
    try:
        if isinstance(value, dict):
            return tuple(GuardSpec(metric, float(margin)) for metric, margin in value.items())
        if isinstance(value, list):
            return tuple(GuardSpec.parse(str(text)) for text in value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc), param="guards") from None
    raise BadRequest(f"`guards` must be a list like ['error_rate:0.01'] or a mapping, got {value!r}", param="guards")


def _check_graders(state: GatewayState, guards: tuple[GuardSpec, ...] | None) -> None:
    """A grader guard must name a configured grader: its scores would never come otherwise."""
    known = {g.name for g in state.cfg.graders}
    for guard in guards or ():
        if guard.grader is not None and guard.grader not in known:
            names = ", ".join(sorted(known)) or "none are configured"
            raise BadRequest(
                f"guard {guard.metric!r}: no grader named {guard.grader!r} (graders: {names}); add it to `graders`",
                param="guards",
            )


@rollouts.post("/{name}")
async def start_rollout(name: str, state: StateDep, body: Annotated[dict, Body()]) -> JSONResponse:
    if not ADAPTER_NAME_RE.match(name):
        raise BadRequest(f"rollout name {name!r} must match {ADAPTER_NAME_RE.pattern}", param="name")
    candidate = _target(state, body.get("candidate"), "candidate")
    adapter = candidate.partition("@")[0]
    control_value = body.get("control") or f"{adapter}@{state.control.stable_version(adapter)}"
    control = _target(state, control_value, "control")
    overrides: dict[str, Any] = {k: body.get(k) for k in SPEC_FIELDS}
    if overrides["steps"] is not None:
        overrides["steps"] = tuple(overrides["steps"])
    overrides["guards"] = _guards(body.get("guards"))
    _check_graders(state, overrides["guards"])
    capture = body.get("capture", "none")
    if capture not in ("none", "bodies"):
        raise BadRequest(f"`capture` must be 'none' or 'bodies', got {capture!r}", param="capture")
    try:
        spec = state.cfg.rollouts.spec(**overrides)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"rollout {name!r}: {exc}") from None
    shadow = body.get("shadow")
    try:
        shadow = None if shadow is None else shadow_percent(shadow)
    except ValueError as exc:
        raise BadRequest(str(exc), param="shadow") from None
    record = new_rollout(name, candidate, control, spec, capture, state.store.clock(), shadow)
    created = await _db(state.store.create_rollout, record, actor=ACTOR, reason=body.get("reason"))  # 409
    await state.control.refresh()
    return JSONResponse(await _report(state, created), status_code=201)


@rollouts.get("")
async def list_rollouts(state: StateDep) -> dict:
    records = await _db(state.store.list_rollouts)
    out = []
    for r in records:
        shown, reason = state.evaluator.effective_state(r)
        out.append({"name": r.name, "adapter": r.adapter, "state": shown, "reason": reason, "weights": r.weights})
    return {"data": out}


async def _report(state: GatewayState, rollout: RolloutRecord) -> dict:
    report = dict((await _db(read_rollout, state.store, rollout)).report)
    report["state"], report["reason"] = state.evaluator.effective_state(rollout)
    report["evaluator"] = {"leader": state.evaluator.leader, "holder": state.evaluator.holder}
    return report


@rollouts.get("/{name}")
async def rollout_status(name: str, state: StateDep) -> dict:
    try:
        rollout = await _db(state.store.get_rollout, name)
    except StoreUnavailable:  # the database is down: what this replica last saw, paused
        rollout = state.control.snapshot.rollouts.get(name)
        if rollout is None:
            raise
        shown, reason = state.evaluator.effective_state(rollout)
        last = {"name": name, "state": shown, "reason": reason, "step": rollout.step, "weights": rollout.weights}
        return finite(last)
    if rollout is None:
        raise NotFound(f"rollout {name!r} does not exist; GET /admin/rollouts lists them", param="name")
    return await _report(state, rollout)


@rollouts.post("/{name}/{action}")
async def rollout_action(name: str, action: str, state: StateDep, body: Annotated[dict | None, Body()] = None) -> dict:
    if action not in MANUAL:
        raise NotFound(f"unknown rollout action {action!r}; actions: {', '.join(MANUAL)}", param="action")
    reason = (body or {}).get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest(f"`reason` must be a string, got {reason!r}", param="reason")
    record = await _db(manual_action, state.store, name, action, ACTOR, reason)
    await state.control.refresh()
    return await _report(state, record)


@rollouts.get("/{name}/captures")
async def rollout_captures(name: str, state: StateDep, label_source: str = USER_SOURCE) -> dict:
    """Captured request/response bodies of the rollout's requests, each with the score its label
    source (user feedback, or grader:NAME) gave it (or None); requests by train_opt_out keys are
    left out and counted (`opted_out`)."""
    source = check_label_source(state.cfg, label_source)
    rollout = await _db(state.store.get_rollout, name)
    if rollout is None:
        raise NotFound(f"rollout {name!r} does not exist", param="name")
    requests = await _db(state.store.requests, rollout=name, limit=state.cfg.rollouts.max_requests)
    scores = {f.response_id: f.score for f in await _db(state.store.feedback, rollout=name, source=source)}
    data, opted_out = captures(requests, scores, opted_out_keys(state.cfg))
    return {"rollout": name, "capture": rollout.capture, "label_source": source, "data": data, "opted_out": opted_out}
