"""What one gateway app holds: config, registry, experiments, engines, keys, metrics."""

from __future__ import annotations

import time
from typing import Annotated

import aiohttp
import httpx
from fastapi import Depends, Request

from serving.auth import KeyStore, Principal
from serving.config import ServingConfig
from serving.experiments import ExperimentTable
from serving.gateway.admission import Admission
from serving.gateway.control import ControlPlane
from serving.gateway.resolve import Resolver, Target
from serving.metrics import GatewayMetrics
from serving.pool import EnginePool
from serving.ratelimit import make_limiter
from serving.registry import AdapterRegistry, engine_template, read_base
from serving.rollouts.evaluator import Evaluator
from serving.store import Store


class GatewayState:
    def __init__(
        self,
        cfg: ServingConfig,
        engine_urls: list[str],
        client: httpx.AsyncClient,
        session: aiohttp.ClientSession,
        store: Store,
    ):
        self.cfg = cfg
        self.base = read_base(cfg.registry.models_dir, cfg.base)
        self.registry = AdapterRegistry(
            cfg.registry.adapters_dir, self.base, cfg.engine.max_lora_rank, engine_template(cfg.engine.chat_template)
        )
        self.metrics = GatewayMetrics()
        self.store = store
        self.control = ControlPlane(cfg, store, self.registry, self.metrics)
        self.resolver = Resolver(self.registry, self.control)
        self.evaluator = Evaluator(store, cfg.rollouts, self.metrics)  # runs only where rollouts.evaluator
        self.client = client  # engine control: adapter loads, health (httpx)
        self.session = session  # proxied requests (aiohttp: less CPU per request)
        self.pool = EnginePool(engine_urls, cfg.engine_adapters_dir, cfg.engine.max_cpu_loras, client, self.metrics)
        self.keys = KeyStore(cfg.auth)
        self.limiter = make_limiter(cfg.ratelimit, self.metrics)  # per process, or shared in Redis
        self.started_at = time.time()  # `created` of the models /v1/models lists
        self.admission = Admission(cfg.gateway)  # requests in flight, upstream connections

    @property
    def base_model(self) -> str:
        return self.base.name

    @property
    def experiments(self) -> ExperimentTable:
        return self.control.experiments

    def resolve(self, model: str, request_key: str, pinned: str | None) -> Target:
        return self.resolver.resolve(model, request_key, pinned)


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, two thread hops per request.
async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def get_principal(request: Request) -> Principal:
    state: GatewayState = request.app.state.gateway
    return state.keys.authenticate(request.headers.get("authorization"))


StateDep = Annotated[GatewayState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
