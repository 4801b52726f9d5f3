"""Narrow FastAPI dependencies: a route asks for what it uses (the registry snapshot's owner, the
control plane, the engine pool, the caller; an OpenAI route the request path), never for the whole
GatewayState (the composition root, serving/gateway/state.py): only this module and the app's
error counting (refusals.count_error) read it.

    async def load_adapter(name: str, registry: RegistryDep, resolver: ResolverDep, pool: PoolDep): ...

Each is an `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.config import ServingConfig
from serving.gateway.admission import Admission
from serving.gateway.auth import KeyStore, Principal
from serving.gateway.control import ControlPlane
from serving.gateway.pool import EnginePool
from serving.gateway.ratelimit import Limiter
from serving.gateway.resolve import Resolver
from serving.gateway.state import GatewayState, RequestPath
from serving.metrics import GatewayMetrics
from serving.registry import AdapterRegistry
from serving.rollouts.evaluator import Evaluator
from serving.store import Store


def _state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def get_principal(request: Request) -> Principal:
    """The API key's principal (401 without one when auth is on)."""
    return _state(request).keys.authenticate(request.headers.get("authorization"))


async def get_request_path(request: Request) -> RequestPath:
    return _state(request).path


async def get_config(request: Request) -> ServingConfig:
    return _state(request).cfg


async def get_registry(request: Request) -> AdapterRegistry:
    return _state(request).registry


async def get_resolver(request: Request) -> Resolver:
    return _state(request).resolver


async def get_control(request: Request) -> ControlPlane:
    return _state(request).control


async def get_pool(request: Request) -> EnginePool:
    return _state(request).pool


async def get_keys(request: Request) -> KeyStore:
    return _state(request).keys


async def get_limiter(request: Request) -> Limiter:
    return _state(request).limiter


async def get_admission(request: Request) -> Admission:
    return _state(request).admission


async def get_store(request: Request) -> Store:
    return _state(request).store


async def get_started_at(request: Request) -> float:
    """When this gateway started (time.time()): the `created` of the models /v1/models lists."""
    return _state(request).started_at


async def get_evaluator(request: Request) -> Evaluator:
    return _state(request).evaluator


async def get_metrics(request: Request) -> GatewayMetrics:
    return _state(request).metrics


ConfigDep = Annotated[ServingConfig, Depends(get_config)]
RegistryDep = Annotated[AdapterRegistry, Depends(get_registry)]
ResolverDep = Annotated[Resolver, Depends(get_resolver)]
ControlDep = Annotated[ControlPlane, Depends(get_control)]
PoolDep = Annotated[EnginePool, Depends(get_pool)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
LimiterDep = Annotated[Limiter, Depends(get_limiter)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
StoreDep = Annotated[Store, Depends(get_store)]
StartedAtDep = Annotated[float, Depends(get_started_at)]
EvaluatorDep = Annotated[Evaluator, Depends(get_evaluator)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
RequestPathDep = Annotated[RequestPath, Depends(get_request_path)]  # what an OpenAI route passes through
CallerDep = Annotated[Principal, Depends(get_principal)]  # the API key's principal (401 without one)
