"""Admin API for rollouts (admin key when auth is on); `loraplane rollout ...` calls these.

POST /admin/rollouts/{name}                 start: {"candidate": "bot@v2", "control"?, "steps"?,
                                            "min_samples"?, "interval_s"?, "alpha"?, "guards"?,
                                            "promote_when"?, "better_on"?, "min_gain"?, "method"?,
                                            "capture"?, "shadow"?}
                                            (shadow: % of the stable version's requests mirrored
                                            to the candidate before the first step: rollouts/shadow.py)
GET  /admin/rollouts                        every rollout (name, adapter, state, weights)
GET  /admin/rollouts/{name}                 state, step, weights, per-variant numbers, guards
POST /admin/rollouts/{name}/{action}        pause | resume | promote | rollback, {"reason"?}
                                            (rollback of a promoted rollout makes the control stable
                                            again; 409 saying why when it cannot: actions.py)
GET  /admin/rollouts/{name}/captures        captured bodies with their scores (for export;
                                            ?label_source=user|grader:NAME; train_opt_out keys left out)

Writes (start, actions) go through the ControlPlane (serving/gateway/control.py), which reloads
this replica's snapshot after each; reads go to the store directly.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from serving.config import ADAPTER_NAME_RE, ServingConfig
from serving.errors import BadRequest, NotFound, StoreUnavailable
from serving.gateway.admin import require_admin
from serving.gateway.deps import ConfigDep, ControlDep, EvaluatorDep, RegistryDep, StoreDep
from serving.gateway.exports import captures, check_label_source, opted_out_keys
from serving.registry import AdapterRegistry, parse_model_name
from serving.rollouts.actions import new_rollout
from serving.rollouts.evaluator import Evaluator
from serving.rollouts.policy import MANUAL, GuardSpec, RolloutSpec
from serving.rollouts.report import finite, read_rollout
from serving.rollouts.shadow import shadow_percent
from serving.store import RolloutRecord, Store
from serving.store.records import USER_SOURCE

rollouts = APIRouter(prefix="/admin/rollouts", dependencies=[Depends(require_admin)])
ACTOR = "admin"
SPEC_FIELDS = ("steps", "min_samples", "interval_s", "alpha", "promote_when", "method", "better_on", "min_gain")


async def _db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A store read off the event loop (the store raises StoreUnavailable / Conflict, never SQLAlchemy's
    errors). Writes go through the ControlPlane, which also reloads this replica's snapshot."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _target(registry: AdapterRegistry, value: Any, field: str) -> str:
    if not isinstance(value, str) or "@" not in value:
        raise BadRequest(f"`{field}` must be ADAPTER@vN, got {value!r}", param=field)
    name, version = parse_model_name(value)
    ref = registry.resolve_fresh(name, version)  # 404 naming the unknown adapter or version
    registry.validate(ref)  # 422 for a version that cannot be served
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


def _check_graders(cfg: ServingConfig, guards: tuple[GuardSpec, ...] | None) -> None:
    """A grader guard must name a configured grader: its scores would never come otherwise."""
    known = {g.name for g in cfg.graders}
    for guard in guards or ():
        if guard.grader is not None and guard.grader not in known:
            names = ", ".join(sorted(known)) or "none are configured"
            raise BadRequest(
                f"guard {guard.metric!r}: no grader named {guard.grader!r} (graders: {names}); add it to `graders`",
                param="guards",
            )


def _check_capture(cfg: ServingConfig, spec: RolloutSpec, adapter: str, capture: str) -> None:
    """A grader guard needs captured answers: graders score nothing else (docs/graders.md)."""
    graded = [g.metric for g in spec.guards if g.grader is not None]
    kept = capture == "bodies" or any(a.name == adapter and a.capture == "bodies" for a in cfg.adapters)
    if graded and not kept:
        raise BadRequest(
            f"guard {graded[0]!r} reads grader scores, and graders score only captured answers: start "
            f"the rollout with capture 'bodies' (--capture bodies) or set "
            f"`adapters: [{{name: {adapter}, capture: bodies}}]`",
            param="capture",
        )


@rollouts.post("/{name}")
async def start_rollout(
    name: str,
    cfg: ConfigDep,
    registry: RegistryDep,
    control_plane: ControlDep,
    store: StoreDep,
    evaluator: EvaluatorDep,
    body: Annotated[dict, Body()],
) -> JSONResponse:
    if not ADAPTER_NAME_RE.match(name):
        raise BadRequest(f"rollout name {name!r} must match {ADAPTER_NAME_RE.pattern}", param="name")
    candidate = _target(registry, body.get("candidate"), "candidate")
    adapter = candidate.partition("@")[0]
    control_value = body.get("control") or f"{adapter}@{control_plane.stable_version(adapter)}"
    control = _target(registry, control_value, "control")
    overrides: dict[str, Any] = {k: body.get(k) for k in SPEC_FIELDS}
    if overrides["steps"] is not None:
        overrides["steps"] = tuple(overrides["steps"])
    overrides["guards"] = _guards(body.get("guards"))
    _check_graders(cfg, overrides["guards"])
    capture = body.get("capture", "none")
    if capture not in ("none", "bodies"):
        raise BadRequest(f"`capture` must be 'none' or 'bodies', got {capture!r}", param="capture")
    try:
        spec = cfg.rollouts.spec(**overrides)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"rollout {name!r}: {exc}") from None
    _check_capture(cfg, spec, adapter, capture)
    shadow = body.get("shadow")
    try:
        shadow = None if shadow is None else shadow_percent(shadow)
    except ValueError as exc:
        raise BadRequest(str(exc), param="shadow") from None
    record = new_rollout(name, candidate, control, spec, capture, store.clock(), shadow)
    created = await control_plane.start_rollout(record, actor=ACTOR, reason=body.get("reason"))  # 409
    return JSONResponse(await _report(store, evaluator, created), status_code=201)


@rollouts.get("")
async def list_rollouts(store: StoreDep, evaluator: EvaluatorDep) -> dict:
    records = await _db(store.list_rollouts)
    out = []
    for r in records:
        shown, reason = evaluator.effective_state(r)
        out.append({"name": r.name, "adapter": r.adapter, "state": shown, "reason": reason, "weights": r.weights})
    return {"data": out}


async def _report(store: Store, evaluator: Evaluator, rollout: RolloutRecord) -> dict:
    report = dict((await _db(read_rollout, store, rollout)).report)
    report["state"], report["reason"] = evaluator.effective_state(rollout)
    report["evaluator"] = {"leader": evaluator.leader, "holder": evaluator.holder}
    return report


@rollouts.get("/{name}")
async def rollout_status(name: str, store: StoreDep, control: ControlDep, evaluator: EvaluatorDep) -> dict:
    try:
        rollout = await _db(store.get_rollout, name)
    except StoreUnavailable:  # the database is down: what this replica last saw, paused
        rollout = control.snapshot.rollouts.get(name)
        if rollout is None:
            raise
        shown, reason = evaluator.effective_state(rollout)
        last = {"name": name, "state": shown, "reason": reason, "step": rollout.step, "weights": rollout.weights}
        return finite(last)
    if rollout is None:
        raise NotFound(f"rollout {name!r} does not exist; GET /admin/rollouts lists them", param="name")
    return await _report(store, evaluator, rollout)


@rollouts.post("/{name}/{action}")
async def rollout_action(
    name: str,
    action: str,
    store: StoreDep,
    control: ControlDep,
    evaluator: EvaluatorDep,
    body: Annotated[dict | None, Body()] = None,
) -> dict:
    if action not in MANUAL:
        raise NotFound(f"unknown rollout action {action!r}; actions: {', '.join(MANUAL)}", param="action")
    reason = (body or {}).get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest(f"`reason` must be a string, got {reason!r}", param="reason")
    record = await control.rollout_action(name, action, actor=ACTOR, reason=reason)
    return await _report(store, evaluator, record)


@rollouts.get("/{name}/captures")
async def rollout_captures(name: str, cfg: ConfigDep, store: StoreDep, label_source: str = USER_SOURCE) -> dict:
    """Captured request/response bodies of the rollout's requests, each with the score its label
    source (user feedback, or grader:NAME) gave it (or None); requests by train_opt_out keys are
    left out and counted (`opted_out`)."""
    source = check_label_source(cfg, label_source)
    rollout = await _db(store.get_rollout, name)
    if rollout is None:
        raise NotFound(f"rollout {name!r} does not exist", param="name")
    requests = await _db(store.requests, rollout=name, limit=cfg.rollouts.max_requests)
    rated = await _db(store.feedback, rollout=name, source=source)
    scores = {f.response_id: f.score for f in rated}
    # Corrections are the users', whatever the label source.
    users = rated if source == USER_SOURCE else await _db(store.feedback, rollout=name)
    corrections = {f.response_id: f.correction for f in users if f.correction is not None}
    data, opted_out = captures(requests, scores, opted_out_keys(cfg), corrections)
    return {"rollout": name, "capture": rollout.capture, "label_source": source, "data": data, "opted_out": opted_out}
