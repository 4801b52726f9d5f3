"""What one gateway app holds: config, registry, experiments, engines, keys, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import aiohttp
import httpx
from fastapi import Depends, Request

from serving.auth import KeyStore, Principal
from serving.config import ServingConfig
from serving.experiments import Experiment, ExperimentTable
from serving.gateway.admission import Admission
from serving.metrics import GatewayMetrics
from serving.pool import EnginePool
from serving.ratelimit import make_limiter
from serving.registry import AdapterRef, AdapterRegistry, parse_model_name, read_base


@dataclass(frozen=True)
class Target:
    """Where a request goes: the base model, or one adapter version (maybe via an experiment)."""

    public_model: str  # what the client asked for, validated
    ref: AdapterRef | None  # None: the base model
    experiment: str | None = None
    upstream_model: str = ""

    @property
    def adapter_label(self) -> str:
        return self.ref.key if self.ref else self.upstream_model

    @property
    def variant_label(self) -> str:
        """The adapter version that answered ("none" for the base): per-version numbers even without
        an experiment. Bounded: versions come from the registry, never from the client."""
        return self.ref.key if self.ref else "none"

    @property
    def model_label(self) -> str:
        return self.experiment or (self.ref.name if self.ref else self.upstream_model)


class GatewayState:
    def __init__(
        self, cfg: ServingConfig, engine_urls: list[str], client: httpx.AsyncClient, session: aiohttp.ClientSession
    ):
        self.cfg = cfg
        self.base = read_base(cfg.registry.models_dir, cfg.base)
        self.registry = AdapterRegistry(cfg.registry.adapters_dir, self.base, cfg.engine.max_lora_rank)
        self.experiments = ExperimentTable([Experiment(e.name, dict(e.variants)) for e in cfg.experiments])
        self.metrics = GatewayMetrics()
        self.client = client  # engine control: adapter loads, health (httpx)
        self.session = session  # proxied requests (aiohttp: less CPU per request)
        self.pool = EnginePool(engine_urls, cfg.engine_adapters_dir, cfg.engine.max_cpu_loras, client, self.metrics)
        self.keys = KeyStore(cfg.auth)
        self.limiter = make_limiter(cfg.ratelimit, self.metrics)  # per process, or shared in Redis
        self.validated: set[str] = set()  # adapter keys that passed validation
        self.started_at = time.time()  # `created` of the models /v1/models lists
        self.admission = Admission(cfg.gateway)  # requests in flight, upstream connections

    @property
    def base_model(self) -> str:
        return self.base.name

    def resolve(self, model: str, request_key: str, pinned: str | None) -> Target:
        if model == self.base_model:
            return Target(model, None, upstream_model=self.base_model)
        experiment = None
        if model in self.experiments:
            experiment, model = model, self.experiments.choose(model, request_key, pinned)
        name, version = parse_model_name(model)
        ref = self.registry.resolve(name, version)
        if ref.key not in self.validated:
            self.registry.validate(ref)
            self.validated.add(ref.key)
        return Target(experiment or model, ref, experiment, ref.key)


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, two thread hops per request.
async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def get_principal(request: Request) -> Principal:
    state: GatewayState = request.app.state.gateway
    return state.keys.authenticate(request.headers.get("authorization"))


StateDep = Annotated[GatewayState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
