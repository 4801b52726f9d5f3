"""Admin API (admin key when auth is on): adapter load/unload, experiment weights, health, metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from serving.config import ExperimentConfig
from serving.errors import BadRequest, EngineUnavailable
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
            engines = [e.index for e in state.pool.engines if key in e.loaded]
            out.append({"id": key, "name": name, "version": version, "loaded_on": engines})
    return out


@admin.get("/adapters")
async def list_adapters(state: StateDep) -> dict:
    return {"data": _adapter_status(state)}


@admin.post("/adapters/{name}/{version}/load")
async def load_adapter(name: str, version: str, state: StateDep) -> dict:
    parsed_name, parsed_version = parse_model_name(f"{name}@{version}")
    ref = state.registry.resolve(parsed_name, parsed_version)
    state.registry.validate(ref)  # rejected versions never reach an engine
    state.validated.add(ref.key)
    loaded = []
    for engine in state.pool.candidates(None):
        await state.pool.ensure_loaded(engine, ref)
        loaded.append(engine.index)
    return {"id": ref.key, "loaded_on": loaded}


@admin.post("/adapters/{name}/{version}/unload")
async def unload_adapter(name: str, version: str, state: StateDep) -> dict:
    parsed_name, parsed_version = parse_model_name(f"{name}@{version}")
    ref = state.registry.resolve(parsed_name, parsed_version)
    state.validated.discard(ref.key)
    return {"id": ref.key, "unloaded_from": await state.pool.unload_everywhere(ref.key)}


@admin.get("/experiments")
async def list_experiments(state: StateDep) -> dict:
    return {"data": [{"name": e.name, "variants": e.variants} for e in state.experiments.all()]}


@admin.put("/experiments/{name}")
async def set_experiment(name: str, state: StateDep, variants: Annotated[dict[str, int], Body(embed=True)]) -> dict:
    try:
        checked = ExperimentConfig(name=name, variants=variants)
    except ValidationError as exc:
        raise BadRequest("; ".join(err["msg"] for err in exc.errors()), param="variants") from None
    for target in checked.variants:  # every variant must exist in the registry
        state.registry.resolve(*parse_model_name(target))
    experiment = state.experiments.set(name, checked.variants)
    return {"name": experiment.name, "variants": experiment.variants}


@ops.get("/health")
async def health(state: StateDep) -> Response:
    engines = [
        {"index": e.index, "url": e.url, "healthy": e.healthy, "adapters": list(e.loaded)} for e in state.pool.engines
    ]
    if any(e.healthy for e in state.pool.engines):
        return JSONResponse({"status": "ok", "engines": engines})
    unavailable = EngineUnavailable("the engine is unavailable: no healthy vLLM engine", code="engine_unavailable")
    body = {**unavailable.body(), "engines": engines}
    return JSONResponse(body, status_code=503)


@ops.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
