"""Admin API (the admin key; see require_admin): adapter load/unload, experiment weights, health, metrics.

Every admin POST takes a JSON body (`{}` when there is nothing to say): see require_json."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from serving.config import ExperimentConfig
from serving.errors import BadRequest, EngineUnavailable
from serving.gateway.deps import ControlDep, KeysDep, MetricsDep, PoolDep, RegistryDep, ResolverDep, StoreDep
from serving.registry import parse_model_name


async def require_admin(request: Request, keys: KeysDep) -> None:
    """The admin key (or the open local-development admin), and a JSON body on every POST."""
    keys.check_admin(request.headers.get("authorization"))
    if request.method == "POST":
        require_json(request.headers.get("content-type"), request.url.path)


def require_json(content_type: str | None, path: str) -> None:
    """An admin POST must say `Content-Type: application/json`: a browser sends that cross-site
    only after a CORS preflight, which the gateway never answers, so no page a developer visits
    can drive the admin API of a gateway with `auth.local_dev_open_admin` on (a plain form or a
    bodiless fetch is a "simple" request that needs no preflight)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise BadRequest(
            f"POST {path} needs a JSON body with `Content-Type: application/json`, got "
            f"{content_type or 'no Content-Type'}; send `{{}}` when there is nothing to say",
            param="Content-Type",
            code="json_body_required",
        )


admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
ops = APIRouter()


@admin.get("/adapters")
async def list_adapters(registry: RegistryDep, control: ControlDep, pool: PoolDep) -> dict:
    adapters = registry.snapshot  # one snapshot for the whole listing
    out = []
    for name in adapters.names:
        stable = control.stable_version(name)
        for version in adapters.versions[name]:
            key = f"{name}@{version}"
            row = {"id": key, "name": name, "version": version, "stable": stable == version}
            out.append({**row, "loaded_on": pool.holders(key)})
    return {"data": out}


@admin.post("/adapters/{name}/{version}/load")
async def load_adapter(name: str, version: str, registry: RegistryDep, resolver: ResolverDep, pool: PoolDep) -> dict:
    ref = registry.resolve_fresh(*parse_model_name(f"{name}@{version}"))
    resolver.approve(ref)  # rejected versions never reach an engine
    loaded = []
    for engine in pool.candidates(None):
        await pool.ensure_loaded(engine, ref)
        loaded.append(engine.index)
    return {"id": ref.key, "loaded_on": loaded}


@admin.post("/adapters/{name}/{version}/unload")
async def unload_adapter(name: str, version: str, registry: RegistryDep, resolver: ResolverDep, pool: PoolDep) -> dict:
    ref = registry.resolve_fresh(*parse_model_name(f"{name}@{version}"))
    resolver.forget(ref)
    return {"id": ref.key, "unloaded_from": await pool.unload_everywhere(ref.key)}


@admin.post("/adapters/{name}/{version}/promote")
async def promote_adapter(
    name: str, version: str, registry: RegistryDep, control: ControlDep, body: Annotated[dict | None, Body()] = None
) -> dict:
    """Make NAME@VERSION the stable version: bare `NAME` resolves to it on every replica (audited)."""
    ref = registry.resolve_fresh(*parse_model_name(f"{name}@{version}"))
    registry.validate(ref)  # never promote a version that cannot be served
    reason = _reason(body)
    previous = await control.promote(ref.name, ref.version, actor="admin", reason=reason)
    return {"id": ref.key, "stable": ref.version, "previous": previous}


@admin.get("/experiments")
async def list_experiments(control: ControlDep) -> dict:
    return {"data": [{"name": e.name, "variants": e.variants, "capture": e.capture} for e in control.experiments.all()]}


def _reason(body: dict | None) -> str | None:
    reason = (body or {}).get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest(f"`reason` must be a string, got {reason!r}", param="reason")
    return reason


@admin.put("/experiments/{name}")
async def set_experiment(name: str, registry: RegistryDep, control: ControlDep, body: Annotated[dict, Body()]) -> dict:
    """Create or replace an experiment; stored, so every replica serves it within 2 s and it survives restarts."""
    try:
        checked = ExperimentConfig(name=name, variants=body.get("variants"), capture=body.get("capture", "none"))
    except ValidationError as exc:
        raise BadRequest("; ".join(err["msg"] for err in exc.errors()), param="variants") from None
    for target in checked.variants:  # every variant must exist in the registry
        registry.resolve_fresh(*parse_model_name(target))
    await control.put_experiment(name, dict(checked.variants), checked.capture, "admin", _reason(body))
    return {"name": name, "variants": checked.variants, "capture": checked.capture}


@admin.delete("/experiments/{name}")
async def delete_experiment(name: str, control: ControlDep) -> dict:
    await control.delete_experiment(name, "admin", None)
    return {"name": name, "deleted": True}


@admin.get("/audit")
async def audit_log(store: StoreDep, subject: str | None = None, limit: int = 200) -> dict:
    records = await asyncio.to_thread(store.audit_log, subject, min(max(limit, 1), 10_000))
    return {"data": [asdict(r) for r in records]}


@ops.get("/health")
async def health(pool: PoolDep) -> Response:
    engines = [{"index": e.index, "url": e.url, "healthy": e.healthy, "adapters": list(e.loaded)} for e in pool.engines]
    if any(e.healthy for e in pool.engines):
        return JSONResponse({"status": "ok", "engines": engines})
    unavailable = EngineUnavailable("the engine is unavailable: no healthy vLLM engine", code="engine_unavailable")
    body = {**unavailable.body(), "engines": engines}
    return JSONResponse(body, status_code=503)


@ops.get("/metrics")
async def metrics(gateway_metrics: MetricsDep) -> Response:
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)
