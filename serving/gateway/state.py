"""What one gateway app holds: config, registry, experiments, engines, keys, metrics.

`GatewayState` is the composition root: `create_app`'s lifespan builds it and routes never take it;
they ask serving/gateway/deps.py for the part they use. `RequestPath` is the part an OpenAI route
uses: the services one request passes through (admit -> resolve -> forward -> log)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import httpx

from serving.config import ServingConfig
from serving.gateway.admission import Admission
from serving.gateway.auth import KeyStore
from serving.gateway.budgets import Budgets
from serving.gateway.cache import ResponseCache
from serving.gateway.control import ControlPlane
from serving.gateway.pool import EnginePool
from serving.gateway.proxy import Proxy
from serving.gateway.ratelimit import Limiter, make_limiter
from serving.gateway.resolve import Resolver
from serving.gateway.shadow import ShadowMirror
from serving.graders.queue import Grading
from serving.metrics import GatewayMetrics
from serving.registry import AdapterRegistry, engine_template, read_base
from serving.rollouts.evaluator import Evaluator
from serving.store import Store


@dataclass(frozen=True)
class RequestPath:
    """The services an OpenAI request passes through, in order (serving/gateway/routes.handle)."""

    cfg: ServingConfig
    keys: KeyStore  # authorize the model, check a pin
    limiter: Limiter  # the key's rate
    budgets: Budgets  # the key's daily tokens (checked before admission, counted from the log record)
    admission: Admission  # in flight, upstream slots
    resolver: Resolver  # model -> variant -> Target
    control: ControlPlane  # experiments (A/B keys), the request log
    cache: ResponseCache  # deterministic answers already given (off unless cache.enabled)
    proxy: Proxy  # engines, fallback, relay
    shadow: ShadowMirror  # a rollout's shadow stage: mirrors to the candidate after the answer
    grading: Grading  # graders score captured answers off the request path
    metrics: GatewayMetrics


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
        self.budgets = Budgets(cfg, store, self.metrics, self.control.log)  # per-key daily token budgets
        self.cache = ResponseCache(cfg, self.metrics, self.base.weights_sha256)  # off unless cache.enabled
        # Graders score captured answers off the request path (serving/graders/queue.py).
        self.grading = Grading.from_config(cfg, self.metrics, self.control.writer.offer_score)
        self.shadow = ShadowMirror(cfg.rollouts.shadow_max_in_flight_share)  # rollouts' shadow stage
        self.proxy = Proxy(self.resolver, self.control, self.pool, session, self.metrics)
        self.path = RequestPath(
            cfg,
            self.keys,
            self.limiter,
            self.budgets,
            self.admission,
            self.resolver,
            self.control,
            self.cache,
            self.proxy,
            self.shadow,
            self.grading,
            self.metrics,
        )
