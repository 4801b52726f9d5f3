"""The serving config: one typed object, every default here; YAML files only override it.

cfg = load_config(Path("configs/serving/default.yaml"), overrides={"gateway.port": 9000})
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import ConfigError
from serving.graders.config import AdapterConfig, GraderConfig, GradingConfig
from serving.registry import ADAPTER_NAME_RE, VERSION_RE  # the registry contract's patterns
from serving.rollouts.policy import GuardSpec, RolloutSpec

ABKeySource = Literal["user", "header", "api_key"]
AB_KEY_SOURCES: tuple[ABKeySource, ...] = ("user", "header", "api_key")
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # API key names (auth.keys[].name)
RESERVED_KEY_NAMES = ("admin", "anonymous")  # what the logs record for the admin key / auth off


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class GatewayConfig(Strict):
    host: str = "127.0.0.1"  # bind address (0.0.0.0: every interface)
    port: int = Field(8000, ge=1, le=65535)  # gateway port
    # Upstream timeouts (seconds): connect covers a dead engine, read covers a stalled stream.
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0)  # an engine may stall this long mid-response
    max_in_flight: int = Field(256, ge=1)  # beyond this, requests get 429 instead of queueing forever
    # Request bounds (serving/gateway/limits.py). A request may ask for at most
    # min(max_tokens_limit, engine.max_model_len - 1) tokens; one that names none gets default_max_tokens.
    max_tokens_limit: int = Field(1024, ge=1)
    default_max_tokens: int = Field(256, ge=1)  # injected when a request names no max_tokens
    max_body_bytes: int = Field(1024 * 1024, ge=1024)  # 413 beyond this, counted while reading
    # Choices one request asks for: a completions request gets len(prompt list) x n (chat: n);
    # beyond this it is refused, naming both (one request could otherwise ask for 160,000 answers).
    max_choices_per_request: int = Field(64, ge=1)
    # Upstream connections the gateway holds at once (None: max_in_flight); a request that waits
    # longer than upstream_wait_timeout_s for one gets 503 with Retry-After instead of a hang.
    max_upstream_connections: int | None = Field(None, ge=1)
    upstream_wait_timeout_s: float = Field(5.0, gt=0)  # seconds a request waits for an upstream connection
    # Where the A/B key of a request comes from, first match wins: "user" (the body's `user`),
    # "header" (X-User-Id), "api_key" (the caller's key). Never the client address. A request
    # with none of them gets a random key (see README, "A/B keys").
    ab_key_sources: list[ABKeySource] = Field(default_factory=lambda: list(AB_KEY_SOURCES))


class RegistryConfig(Strict):
    models_dir: Path = Path("models")  # registered bases (models/NAME/, loraplane-base.json)
    adapters_dir: Path = Path("adapters")  # published adapters (adapters/NAME/vN/)
    # The adapters directory as the engine sees it (differs from adapters_dir when the engine
    # runs in another container, e.g. on Kubernetes). None = same as adapters_dir.
    engine_adapters_dir: Path | None = None


class EngineConfig(Strict):
    """How `loraplane serve` starts local vLLM OpenAI servers."""

    replicas: int = Field(1, ge=0, le=16)  # 0 = start none; use `engines` URLs only
    port: int = Field(8100, ge=1, le=65535)  # replica i listens on port + i
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: chosen by hardware
    max_loras: int = Field(4, ge=1)  # adapters resident in one batch
    max_lora_rank: int = Field(16, ge=1)  # vLLM --max-lora-rank: larger adapters are refused
    max_cpu_loras: int = Field(8, ge=1)  # adapters cached in host memory
    max_model_len: int = Field(2048, ge=64)  # vLLM --max-model-len: prompt + completion tokens
    kv_cache_memory_bytes: int = Field(2 * 1024**3, ge=64 * 1024**2)  # CPU KV cache
    quantization: str | None = None  # vLLM --quantization; None: read from the checkpoint's config
    startup_timeout_s: float = Field(300.0, gt=0)  # seconds an engine may take to answer /health
    extra_args: list[str] = Field(default_factory=list)  # appended to the vLLM command line
    env: dict[str, str] = Field(default_factory=dict)  # extra environment of the engine processes
    # CPU engines: "auto" binds each local replica's OpenMP threads to its own share of the usable
    # cores (all of them for one replica; benchmarks/RESULTS.md); "vllm" keeps vLLM's default, which
    # reserves a core for its scheduler. VLLM_CPU_OMP_THREADS_BIND in `env` overrides both.
    cpu_bind: Literal["auto", "vllm"] = "auto"
    # CPU engines: "loraplane" swaps vLLM's per-token-gather LoRA ops for dense all-adapter matmuls
    # (loraplane_vllm/cpu_lora.py, a vLLM plugin); "vllm" keeps vLLM's own.
    cpu_lora_ops: Literal["loraplane", "vllm"] = "loraplane"
    # Tool calls (docs/tools.md): vLLM's --tool-call-parser, with --enable-auto-tool-choice (e.g.
    # pythonic); None: the engines parse no tool calls. Needs chat_template naming the same parser.
    tool_call_parser: str | None = None
    # vLLM's --chat-template: the .jinja file the adapters were trained with (the trainer's
    # data.chat_template); its first line names its parser (`{#- loraplane-tool-call-parser: NAME`),
    # which must equal tool_call_parser. None: the base's own template.
    chat_template: str | None = None

    @model_validator(mode="after")
    def _lora_cache(self) -> EngineConfig:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras}); "
                "vLLM refuses to start otherwise"
            )
        return self


class ExperimentConfig(Strict):
    """A public model name split across adapter versions by weight, e.g. 90/10."""

    name: str
    variants: dict[str, int]  # "adapter@version" -> weight
    capture: Literal["none", "bodies"] = "none"  # "bodies": keep request/response bodies (store.body_retention_s)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ADAPTER_NAME_RE.match(value):
            raise ValueError(f"experiment name {value!r} must match {ADAPTER_NAME_RE.pattern}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("an experiment needs at least one variant")
        for target, weight in value.items():
            name, _, version = target.partition("@")
            if not ADAPTER_NAME_RE.match(name) or not VERSION_RE.match(version):
                raise ValueError(f"variant {target!r} must be 'adapter@vN'")
            if weight < 0:
                raise ValueError(f"variant {target!r} has negative weight {weight}")
        if sum(value.values()) <= 0:
            raise ValueError("variant weights must sum to more than 0")
        return value


class KeyBudgets(Strict):
    """Tokens (prompt + completion) a key may use per UTC day, enforced by every gateway replica
    (serving/gateway/budgets.py; docs/usage.md). Unset: no budget."""

    tokens_per_day: int | None = Field(None, ge=1)  # all models together
    per_model: dict[str, int] = Field(default_factory=dict)  # model (adapter/experiment/base name) -> tokens per day

    @field_validator("per_model")
    @classmethod
    def _per_model(cls, value: dict[str, int]) -> dict[str, int]:
        for model, tokens in value.items():
            if tokens < 1:
                raise ValueError(f"per_model[{model!r}] is {tokens}: a budget must be at least 1 token per day")
            if "@" in model:
                raise ValueError(f"per_model[{model!r}]: name the model without @version (budgets span versions)")
        return value


class KeyConfig(Strict):
    """An API key, stored as its sha256 (never the key itself). Its name is what the request log,
    feedback ownership and rate-limit buckets record: unique, 1..128 of [A-Za-z0-9._-], not
    "admin" or "anonymous" (AuthConfig checks them all, naming the key)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"])  # model/experiment names, "*" = all
    rate_limit_per_minute: int = Field(0, ge=0)  # 0 = unlimited
    may_pin_variant: bool = False  # may choose an experiment's variant with X-Loraplane-Variant
    budgets: KeyBudgets = Field(default_factory=KeyBudgets)  # tokens per UTC day (docs/usage.md)
    train_opt_out: bool = False  # its requests are never exported as training data (docs/graders.md)


class AuthConfig(Strict):
    enabled: bool = False  # False: no key needed for /v1 (local use); True: every /v1 call needs a key
    # The admin API (/admin/*) always needs this key, auth.enabled or not; without one it answers 403.
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    keys: list[KeyConfig] = Field(default_factory=list)  # API keys (hashes) and what each may call
    # Local development only: an open admin API, honoured only when gateway.host is a loopback
    # address (the gateway refuses to start otherwise).
    local_dev_open_admin: bool = False

    @model_validator(mode="after")
    def _unique_keys(self) -> AuthConfig:
        for i, key in enumerate(self.keys):
            if not KEY_NAME_RE.match(key.name) or key.name in RESERVED_KEY_NAMES:
                raise ValueError(
                    f"keys[{i}].name {key.name[:160]!r} must be 1..128 of A-Z a-z 0-9 . _ - "
                    f"and not {' or '.join(RESERVED_KEY_NAMES)}"
                )
            for field in ("name", "sha256"):
                first = next(j for j, other in enumerate(self.keys) if getattr(other, field) == getattr(key, field))
                if first != i:
                    raise ValueError(
                        f"keys[{first}] ({self.keys[first].name!r}) and keys[{i}] ({key.name!r}) have the same "
                        f"{field}: give each key its own"
                    )
        return self


class RateLimitConfig(Strict):
    """Where per-key rate limits are counted. None: in each gateway process (N replicas allow N
    times the rate); a Redis/Valkey URL: shared by every replica (env LORAPLANE_REDIS_URL overrides)."""

    redis_url: str | None = None  # redis://host:port/db for shared rate limits
    # Redis unreachable: "open" serves the request uncounted (loraplane_ratelimit_errors_total
    # counts it); "closed" answers 503 with Retry-After.
    on_redis_error: Literal["open", "closed"] = "open"
    redis_timeout_s: float = Field(0.25, gt=0)  # seconds per Redis call


class BudgetsConfig(Strict):
    """Where per-key token budgets (auth.keys[].budgets) are counted: Redis/Valkey (budgets.redis_url,
    else ratelimit.redis_url) shared by every replica, else the store's daily usage table read
    through a short cache. A store that cannot be read lets requests go on, counted in
    loraplane_budget_errors_total (docs/usage.md)."""

    redis_url: str | None = None  # None: ratelimit.redis_url; neither set: the control-plane store
    store_cache_s: float = Field(2.0, gt=0)  # store backend: how long one read of a key's usage is reused
    timeout_s: float = Field(0.25, gt=0)  # seconds a budget check waits for its store; then the request goes on


class CacheConfig(Strict):
    """The response cache (serving/gateway/cache.py, docs/cache.md): answers to deterministic,
    non-streamed requests (temperature 0, or a `seed`), keyed by the adapter version and the request."""

    enabled: bool = False  # opt-in: serve repeated deterministic requests from the cache
    # None: an LRU in each gateway process; a Redis/Valkey URL (redis://host:port/db): one cache
    # shared by every replica (bounded by the server's own maxmemory policy, not max_entries/max_bytes).
    # Env LORAPLANE_CACHE_REDIS_URL overrides it (a URL with a password, from a Secret).
    redis_url: str | None = None
    ttl_s: float = Field(300.0, gt=0)  # seconds an answer is served from the cache after it was stored
    max_entries: int = Field(10_000, ge=1)  # in-process LRU: beyond this the least recently used answer goes
    max_bytes: int = Field(64 * 1024**2, ge=1024)  # in-process LRU: total answer bytes kept (JSON)
    max_entry_bytes: int = Field(256 * 1024, ge=1)  # an answer over this many bytes (JSON) is not stored
    # Seconds per Redis call; a Redis that is down or slower: the request goes on uncached
    # (loraplane_cache_errors_total counts it) and Redis is left alone for a second.
    redis_timeout_s: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> CacheConfig:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError(
                f"cache.max_entry_bytes ({self.max_entry_bytes}) is above cache.max_bytes ({self.max_bytes}): "
                "lower it or raise max_bytes"
            )
        return self


class StoreConfig(Strict):
    """The control-plane database (serving/store/): experiments, rollouts, stable versions, logs."""

    # SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db. None: the SQLite file
    # `loraplane.db` in registry.adapters_dir (one gateway). Env LORAPLANE_STORE_URL overrides it.
    url: str | None = None
    poll_interval_s: float = Field(1.0, gt=0, le=1.0)  # every replica sees a change within 2 s
    connect_timeout_s: float = Field(5.0, gt=0)  # seconds to connect to the database
    request_log: bool = True  # log every completion (id, variant, status, TTFT, tokens)
    log_queue_size: int = Field(20_000, ge=1)  # records waiting for the writer; beyond: dropped, counted
    log_batch_size: int = Field(500, ge=1)  # records per write
    log_flush_interval_s: float = Field(0.2, gt=0)  # the writer writes at least this often
    body_retention_s: float = Field(7 * 24 * 3600.0, gt=0)  # captured bodies are erased after this
    # Request-log and feedback rows older than this are deleted by the writer, in batches; rows of a
    # running or paused rollout are kept until it ends (its statistics span every step). None: keep all.
    request_log_retention_s: float | None = Field(30 * 24 * 3600.0, gt=0)
    # A captured request + response body (JSON bytes) over this is not kept: the row is logged
    # without bodies and loraplane_request_log_bodies_skipped_total counts it. 0: capture nothing.
    body_capture_max_bytes: int = Field(256 * 1024, ge=0)
    feedback_timeout_s: float = Field(5.0, gt=0)  # POST /v1/feedback waits this long for the write


class RolloutsConfig(Strict):
    """Progressive rollouts (serving/rollouts/): the evaluator and the defaults of `rollout start`.

    Statistics: docs/rollouts.md. `loraplane rollout start` flags override the defaults per rollout.
    """

    evaluator: bool = True  # run the evaluator in this gateway (one holds the lease at a time)
    lease_s: float = Field(10.0, gt=0)  # a dead evaluator's lease lapses after this; another takes over
    tick_s: float = Field(1.0, gt=0)  # how often the evaluator renews its lease and looks for due rollouts
    interval_s: float = Field(30.0, gt=0)  # seconds between a rollout's evaluations
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])  # candidate % per step; 100 = promoted
    min_samples: int = Field(200, ge=1)  # requests per variant at a step before it may advance
    alpha: float = Field(0.05, gt=0, lt=0.5)  # chance of any false rollback or promotion over a rollout
    method: Literal["msprt", "eb"] = "msprt"  # always-valid interval for candidate - control
    promote_when: Literal["better", "not_worse", "no_regression"] = "better"  # see docs/rollouts.md
    better_on: str = "feedback"  # the score guard `better` reads: feedback or grader:NAME
    # `better` only: roll back once better_on's gain is shown below this (score points); None: never
    min_gain: float | None = Field(None, gt=0, lt=1)
    # Guards and the worsening each tolerates (error-rate points, p95-exceedance points, score points).
    guards: dict[str, float] = Field(  # keys: error_rate, ttft_p95, feedback
        default_factory=lambda: {"error_rate": 0.0, "ttft_p95": 0.0, "feedback": 0.0}
    )
    max_requests: int = Field(200_000, ge=1)  # request-log rows one evaluation reads per rollout
    # Shadow stage: a request is mirrored to the candidate only while live requests plus mirrors in
    # flight are below this share of gateway.max_in_flight (else the mirror is dropped and counted).
    shadow_max_in_flight_share: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _spec_is_valid(self) -> RolloutsConfig:
        try:
            self.spec()
        except ValueError as exc:
            raise ValueError(f"rollouts: {exc}") from None
        return self

    def spec(self, **overrides: Any) -> RolloutSpec:
        """The defaults as a RolloutSpec, with per-rollout overrides (steps, min_samples, ...)."""
        values: dict[str, Any] = {
            "steps": tuple(self.steps),
            "min_samples": self.min_samples,
            "interval_s": self.interval_s,
            "alpha": self.alpha,
            "guards": tuple(GuardSpec(metric, margin) for metric, margin in self.guards.items()),  # type: ignore[arg-type]
            "promote_when": self.promote_when,
            "method": self.method,
            "better_on": self.better_on,
            "min_gain": self.min_gain,
        }
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("promote_when", "better") != "better" and "min_gain" not in given:
            values["min_gain"] = None  # the default min_gain belongs to the rule better
        if given.get("min_gain") == 0 and not isinstance(given["min_gain"], bool):
            given["min_gain"] = None  # 0: no futility rule for this rollout, whatever rollouts.min_gain says
        values.update(given)
        return RolloutSpec(**values)


class ServingConfig(Strict):
    base: str = "smollm2-135m-instruct"  # registry name under models_dir, or a local HF dir
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    # Extra engines already running elsewhere (e.g. Kubernetes Services): base URLs.
    engines: list[str] = Field(default_factory=list)
    experiments: list[ExperimentConfig] = Field(default_factory=list)  # A/B experiments seeded into the store at start
    auth: AuthConfig = Field(default_factory=AuthConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    rollouts: RolloutsConfig = Field(default_factory=RolloutsConfig)
    ratelimit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)  # response cache (docs/cache.md), off by default
    adapters: list[AdapterConfig] = Field(default_factory=list)  # per-adapter settings (capture)
    graders: list[GraderConfig] = Field(default_factory=list)  # score captured answers (docs/graders.md)
    grading: GradingConfig = Field(default_factory=GradingConfig)  # the graders' queue

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        if self.engine.replicas == 0 and not self.engines:
            raise ValueError("engine.replicas is 0 and `engines` is empty: give at least one engine")
        if self.auth.local_dev_open_admin and not is_loopback(self.gateway.host):
            raise ValueError(
                f"auth.local_dev_open_admin is true but gateway.host is {self.gateway.host!r}, not a loopback "
                "address: set auth.admin_key_sha256 instead (sha256 of the admin key) or bind to 127.0.0.1"
            )
        if self.gateway.default_max_tokens > self.gateway.max_tokens_limit:
            raise ValueError(
                f"gateway.default_max_tokens ({self.gateway.default_max_tokens}) is above gateway.max_tokens_limit "
                f"({self.gateway.max_tokens_limit})"
            )
        for what, names in (
            ("experiment", [e.name for e in self.experiments]),
            ("adapters[]", [a.name for a in self.adapters]),
            ("grader", [g.name for g in self.graders]),
        ):
            if len(names) != len(set(names)):
                raise ValueError(f"{what} names repeat: {names}")
        graders = {f"grader:{g.name}" for g in self.graders}
        unknown = [m for m in self.rollouts.guards if m.startswith("grader:") and m not in graders]
        if unknown:
            raise ValueError(f"rollouts.guards name graders {unknown} that `graders` does not define")
        return self

    @property
    def engine_adapters_dir(self) -> Path:
        return self.registry.engine_adapters_dir or self.registry.adapters_dir


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"serving config {path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(paths: Path | list[Path] | None = None, overrides: dict[str, Any] | None = None) -> ServingConfig:
    """Defaults <- YAML files (deep-merged in order) <- dotted overrides. Errors name the key."""
    files = [paths] if isinstance(paths, Path) else list(paths or [])
    data: dict[str, Any] = {}
    for path in files:
        _deep_merge(data, _read_yaml(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    if url := os.environ.get("LORAPLANE_REDIS_URL"):
        _set_dotted(data, "ratelimit.redis_url", url)
    if url := os.environ.get("LORAPLANE_CACHE_REDIS_URL"):
        _set_dotted(data, "cache.redis_url", url)
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in exc.errors())
        where = ", ".join(str(p) for p in files) or "serving config"
        raise ConfigError(f"{where}: {problems}") from None
