"""Admin API (admin key when auth is on): adapter load/unload, experiment weights, health, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from serving.config import ExperimentConfig
from serving.errors import BadRequest
from serving.gateway.state import GatewayState, StateDep
from serving.registry import parse_model_name


async def require_admin(request: Request) -> None:
    request.app.state.gateway.keys.check_admin(request.headers.get("authorization"))


admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
ops = APIRouter()


def _adapter_status(state: GatewayState) -> list[dict]:
    out = []
    for name in state.registry.names():
        for version in state.registry.versions(name):
            key = f"{name}@{version}"
            stable = state.control.stable_version(name) == version
            out.append(
                {"id": key, "name": name, "version": version, "stable": stable, "loaded_on": state.pool.holders(key)}
            )
    return out


@admin.get("/adapters")
async def list_adapters(state: StateDep) -> dict:
    return {"data": _adapter_status(state)}


@admin.post("/adapters/{name}/{version}/load")
async def load_adapter(name: str, version: str, state: StateDep) -> dict:
    parsed_name, parsed_version = parse_model_name(f"{name}@{version}")
    ref = state.registry.resolve(parsed_name, parsed_version)
    state.registry.validate(ref)  # rejected versions never reach an engine
    state.resolver.validated.add(ref.key)
    loaded = []
    for engine in state.pool.candidates(None):
        await state.pool.ensure_loaded(engine, ref)
        loaded.append(engine.index)
    return {"id": ref.key, "loaded_on": loaded}


@admin.post("/adapters/{name}/{version}/unload")
async def unload_adapter(name: str, version: str, state: StateDep) -> dict:
    parsed_name, parsed_version = parse_model_name(f"{name}@{version}")
    ref = state.registry.resolve(parsed_name, parsed_version)
    state.resolver.validated.discard(ref.key)
    return {"id": ref.key, "unloaded_from": await state.pool.unload_everywhere(ref.key)}


@admin.post("/adapters/{name}/{version}/promote")
async def promote_adapter(
    name: str, version: str, state: StateDep, body: Annotated[dict | None, Body()] = None
) -> dict:
    """Make NAME@VERSION the stable version: bare `NAME` resolves to it on every replica (audited)."""
    parsed_name, parsed_version = parse_model_name(f"{name}@{version}")
    ref = state.registry.resolve(parsed_name, parsed_version)
    state.registry.validate(ref)  # never promote a version that cannot be served
    reason = _reason(body)
    previous = await state.control.promote(ref.name, ref.version, actor="admin", reason=reason)
    return {"id": ref.key, "stable": ref.version, "previous": previous}


@admin.get("/experiments")
async def list_experiments(state: StateDep) -> dict:
    return {"data": [{"name": e.name, "variants": e.variants, "capture": e.capture} for e in state.experiments.all()]}


def _reason(body: dict | None) -> str | None:
    reason = (body or {}).get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest(f"`reason` must be a string, got {reason!r}", param="reason")
    return reason


@admin.put("/experiments/{name}")
async def set_experiment(name: str, state: StateDep, body: Annotated[dict, Body()]) -> dict:
    """Create or replace an experiment; stored, so every replica serves it within 2 s and it survives restarts."""
    try:
        checked = ExperimentConfig(name=name, variants=body.get("variants"), capture=body.get("capture", "none"))
    except ValidationError as exc:
        raise BadRequest("; ".join(err["msg"] for err in exc.errors()), param="variants") from None
    for target in checked.variants:  # every variant must exist in the registry
        state.registry.resolve(*parse_model_name(target))
    await state.control.put_experiment(name, dict(checked.variants), checked.capture, "admin", _reason(body))
    return {"name": name, "variants": checked.variants, "capture": checked.capture}


@admin.delete("/experiments/{name}")
async def delete_experiment(name: str, state: StateDep) -> dict:
    await state.control.delete_experiment(name, "admin", None)
    return {"name": name, "deleted": True}


@admin.get("/audit")
async def audit_log(state: StateDep, subject: str | None = None, limit: int = 200) -> dict:
    records = await asyncio.to_thread(state.store.audit_log, subject, min(max(limit, 1), 10_000))
    return {"data": [asdict(r) for r in records]}


@ops.get("/health")
async def health(state: StateDep) -> Response:
    engines = [
        {"index": e.index, "url": e.url, "healthy": e.healthy, "adapters": list(e.loaded)} for e in state.pool.engines
    ]
    if any(e.healthy for e in state.pool.engines):
        return JSONResponse({"status": "ok", "engines": engines})
    body = {
        "error": {
            "message": "the engine is unavailable: no healthy vLLM engine",
            "type": "server_error",
            "param": None,
            "code": "engine_unavailable",
        },
        "engines": engines,
    }
    return JSONResponse(body, status_code=503)


@ops.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
