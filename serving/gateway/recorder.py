"""One call: one try of a request on one variant, and everything recorded about it.

A `Call` owns what the gateway counts and logs for that try: its response id, its metrics
(requests, latency, TTFT, tokens) and its request-log record, written exactly once by `finish`.

Response ids are the gateway's: every call issues `<spec.id_prefix><uuid hex>` (`chatcmpl-...`
for chat, `cmpl-...` for completions, `resp_...` for responses: serving/gateway/protocol.py) before
anything is forwarded, and the proxy puts that id into every response and stream chunk the client
gets, whatever id the engine chose. Id fields in the client's body (`request_id`, from which vLLM would build the
response id) are never forwarded.

The outcome says what the try means for the variant that was chosen (records.OUTCOMES): only an
"error" counts against it; a client that hung up (logged as status 499) and the caller's own bad
request do not. A request the assigned variant failed before the first byte and a control answered
is two calls: the failure on the variant's own row, the control's answer marked
excluded="fallback" (records.EXCLUSIONS).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import httpx
from fastapi.responses import Response

from serving.errors import AdapterRejected
from serving.gateway.pool import Engine
from serving.gateway.protocol import RouteSpec
from serving.gateway.resolve import Target
from serving.metrics import GatewayMetrics, status_class
from serving.store import RequestRecord
from serving.store.records import ERROR_KINDS

# Body fields a client may not choose: vLLM builds the response id from `request_id`, and
# `kv_transfer_params` names other requests' KV caches (disaggregated prefill).
CLIENT_ID_FIELDS = ("request_id", "kv_transfer_params")
CLIENT_CLOSED = 499  # logged when the client hung up before the answer was complete (nginx's code)


def upstream_body(body: dict, upstream_model: str) -> dict:
    """What the engine receives: the client's body for `upstream_model`, without client-chosen ids."""
    out = {k: v for k, v in body.items() if k not in CLIENT_ID_FIELDS}
    out["model"] = upstream_model
    return out


class FailedBeforeFirstByte(Exception):
    """A call failed before the client got any byte (already logged on its own row): another variant
    may still answer. `response` is what the client gets if none does."""

    def __init__(self, response: Response):
        super().__init__(f"failed before the first byte ({response.status_code})")
        self.response = response


def failure_kind(exc: BaseException) -> str:
    """The ERROR_KINDS entry for an exception that ended a call: an adapter the engine refused, a
    timeout (anywhere in its chain of causes), else the engine was unavailable."""
    if isinstance(exc, AdapterRejected):
        return "load_failed"
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; never loop on a cyclic one
        if seen is None:
            break
        if isinstance(seen, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return "unavailable"


def outcome_of(status: int, error_kind: str | None) -> str:
    if error_kind is not None or status >= 500:
        return "error"
    if status == CLIENT_CLOSED:
        return "client_closed"
    return "client_error" if status >= 400 else "ok"


@dataclass
class Call:
    spec: RouteSpec  # the route's protocol: its label, id prefix, upstream path
    body: dict  # what is sent upstream (upstream_body)
    target: Target
    started: float  # perf_counter() when the request arrived (a fallback keeps its request's)
    metrics: GatewayMetrics = field(repr=False)
    log: Callable[[RequestRecord], None] = field(repr=False)  # the request log (never blocks)
    key_name: str = "anonymous"  # the API key's name (never the key)
    unit: str | None = None  # abkey.unit_of(the request's A/B key)
    excluded: str | None = None  # records.EXCLUSIONS; "pinned" when the caller chose the variant
    grade: Callable[[RequestRecord], None] = field(default=lambda record: None, repr=False)  # graders' queue
    mirror_of: str | None = None  # a shadow mirror: the live call's response id (store/shadow.py pairs them)
    # Issued and filled in while relaying (a fallback's `replace` starts them afresh):
    response_id: str = field(init=False, default="")
    ttft_s: float | None = field(init=False, default=None)
    usage: dict | None = field(init=False, default=None)
    answer: list[str] | None = field(init=False, default=None)  # response text parts, only with capture: bodies
    logged: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.response_id = f"{self.spec.id_prefix}{uuid.uuid4().hex}"
        if self.excluded is None and self.target.pinned:
            self.excluded = "pinned"
        if self.target.capture_bodies:
            self.answer = []

    @property
    def route(self) -> str:
        return self.spec.name

    @property
    def path(self) -> str:
        return self.spec.upstream_path

    @property
    def engine_request_id(self) -> str:
        """Sent as X-Request-Id: vLLM then builds the very id the gateway issued."""
        return self.response_id.removeprefix(self.spec.id_prefix)

    @property
    def labels(self) -> tuple[str, str]:
        return self.target.model_label, self.target.variant_label

    def fallback(self, target: Target) -> Call:
        """A call of the same request on `target` (the control): its own id, left out of the statistics."""
        body = {**self.body, "model": target.upstream_model}
        return replace(self, body=body, target=target, excluded="fallback")

    def headers(self, engine: Engine | None) -> dict[str, str]:
        out = {"X-Loraplane-Adapter": self.target.adapter_label}
        if engine is not None:
            out["X-Loraplane-Engine"] = engine.label
        if self.target.experiment:
            out["X-Loraplane-Experiment"] = self.target.experiment
        if self.target.rollout:
            out["X-Loraplane-Rollout"] = self.target.rollout
        if self.target.experiment or self.target.rollout:
            out["X-Loraplane-Variant"] = self.target.variant_label  # the variant that answered
        return out

    # --- what relaying observes ----------------------------------------------------------------

    def first_token(self) -> None:
        self.ttft_s = time.perf_counter() - self.started
        self.metrics.ttft.labels(*self.labels).observe(self.ttft_s)

    def add_usage(self, usage: dict | None) -> None:
        if usage:
            self.usage = usage
            self.metrics.prompt_tokens.labels(*self.labels).inc(usage.get("prompt_tokens") or 0)
            self.metrics.completion_tokens.labels(*self.labels).inc(usage.get("completion_tokens") or 0)

    def add_text(self, text: str) -> None:
        if text and self.answer is not None:
            self.answer.append(text)

    # --- the end ---------------------------------------------------------------------------------

    def finish(self, status: int, error_kind: str | None = None) -> None:
        """Count and log the call, once (later calls are ignored). `error_kind` (ERROR_KINDS) marks a
        failure of the variant; a 5xx without one counts as "upstream_status"."""
        if self.logged:
            return
        self.logged = True
        if error_kind is None and status >= 500:
            error_kind = "upstream_status"
        assert error_kind is None or error_kind in ERROR_KINDS, error_kind
        model, variant = self.labels
        latency_s = time.perf_counter() - self.started
        self.metrics.requests.labels(self.route, model, variant, status_class(status)).inc()
        self.metrics.request_latency.labels(self.route, model, variant).observe(latency_s)
        outcome = outcome_of(status, error_kind)
        if outcome == "error":
            self.metrics.variant_errors.labels(model, variant, error_kind or "upstream_status").inc()
        record = self.record(status, outcome, error_kind, latency_s)
        self.grade(record)  # graders' bounded queue (never blocks), before the writer may trim bodies
        self.log(record)  # queued for the writer

    def record(self, status: int, outcome: str, error_kind: str | None, latency_s: float) -> RequestRecord:
        usage = self.usage or {}
        capture = self.answer is not None
        return RequestRecord(
            id=self.response_id,
            created_at=time.time(),
            route=self.route,
            model=self.target.model_label,
            variant=self.target.variant_label,
            key_name=self.key_name,
            status=status,
            latency_s=latency_s,
            experiment=self.target.experiment,
            rollout=self.target.rollout,
            ttft_s=self.ttft_s,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            request_body={k: v for k, v in self.body.items() if k != "stream_options"} if capture else None,
            response_text="".join(self.answer or []) if capture else None,
            unit=self.unit,
            step=self.target.step,
            outcome=outcome,
            error_kind=error_kind,
            excluded=self.excluded,
            mirror_of=self.mirror_of,
        )
