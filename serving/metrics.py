"""Every Prometheus metric of the gateway process, declared here and nowhere else.

Names follow Prometheus conventions: `loraplane_` prefix, base units in the name, counters
end in `_total`. Labels come only from bounded sets: route, model (served model ids from
the registry), variant, status class, engine index.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, disable_created_metrics

# No `*_created` series: they double the exposition and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class GatewayMetrics:
    """One instance per app (no global registry), exposed at /metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplane_requests_total",
            "Requests by route, model, variant and status class",
            ["route", "model", "variant", "status_class"],
            registry=r,
        )
        self.request_latency = Histogram(
            "loraplane_request_duration_seconds",
            "End-to-end request latency at the gateway",
            ["route", "model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loraplane_time_to_first_token_seconds",
            "Time from request arrival to the first content token sent (streams)",
            ["model", "variant"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("loraplane_prompt_tokens_total", "Prompt tokens", ["model", "variant"], registry=r)
        self.completion_tokens = Counter(
            "loraplane_completion_tokens_total", "Completion tokens", ["model", "variant"], registry=r
        )
        self.in_flight_streams = Gauge("loraplane_in_flight_streams", "Streaming responses in progress", registry=r)
        self.upstream_errors = Counter(
            "loraplane_upstream_errors_total", "Engine failures seen by the gateway", ["engine", "kind"], registry=r
        )
        self.variant_errors = Counter(
            "loraplane_variant_errors_total",
            "Requests that failed on the variant chosen for them, by kind (load_failed, upstream_status, "
            "unavailable, timeout, stream_error, truncated)",
            ["model", "variant", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "loraplane_fallbacks_total",
            "Requests whose assigned variant failed before the first byte and that the control answered instead",
            ["model", "variant"],
            registry=r,
        )
        self.retries = Counter(
            "loraplane_upstream_retries_total", "Requests retried on another engine before the first byte", registry=r
        )
        self.adapter_loads = Counter(
            "loraplane_adapter_loads_total", "Adapter loads into an engine", ["adapter", "result"], registry=r
        )
        self.adapter_load_duration = Histogram(
            "loraplane_adapter_load_duration_seconds",
            "Time to load an adapter into an engine",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_unloads = Counter(
            "loraplane_adapter_unloads_total", "Adapter unloads (LRU or admin)", ["adapter"], registry=r
        )
        self.unkeyed_requests = Counter(
            "loraplane_unkeyed_requests_total",
            "Requests to an experiment without an A/B key (each got a random one)",
            ["route"],
            registry=r,
        )
        self.ratelimit_errors = Counter(
            "loraplane_ratelimit_errors_total",
            "Rate-limit checks that could not reach the shared store (ratelimit.on_redis_error decides)",
            registry=r,
        )
        # Usage and budgets (serving/gateway/budgets.py). `key` is an API key's name from the config
        # (bounded: auth.keys, plus "anonymous" and "admin"); `budget` is a model name or "all".
        self.key_tokens = Counter(
            "loraplane_key_tokens_total",
            "Tokens answered per API key and model, by kind (prompt, completion)",
            ["key", "model", "kind"],
            registry=r,
        )
        self.budget_refusals = Counter(
            "loraplane_budget_refusals_total",
            "Requests refused (429) because a key's daily token budget was spent, by budget (model or all)",
            ["key", "budget"],
            registry=r,
        )
        self.budget_errors = Counter(
            "loraplane_budget_errors_total",
            "Budget checks (op=check) or counts (op=count) that could not reach the budget store; the requests went on",
            ["op"],
            registry=r,
        )
        self.budget_uncounted_tokens = Counter(
            "loraplane_budget_uncounted_tokens_total",
            "Tokens answered that the budget store could not count (it was down): the gap in budgets",
            registry=r,
        )
        self.engine_healthy = Gauge(
            "loraplane_engine_healthy", "1 when the engine answers /health", ["engine"], registry=r
        )

        # Response cache (serving/gateway/cache.py); backend: "local" (in-process LRU) or "redis".
        self.cache_hits = Counter(
            "loraplane_cache_hits_total", "Requests answered from the response cache", ["backend"], registry=r
        )
        self.cache_misses = Counter(
            "loraplane_cache_misses_total",
            "Cacheable requests not found in the response cache (forwarded; a 200 answer is stored)",
            ["backend"],
            registry=r,
        )
        self.cache_bypasses = Counter(
            "loraplane_cache_bypasses_total",
            "Cacheable requests that skipped the lookup (Cache-Control: no-cache or no-store)",
            ["backend"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "loraplane_cache_evictions_total",
            "Answers dropped from the in-process cache, by reason (size: LRU bound, ttl: expired)",
            ["backend", "reason"],
            registry=r,
        )
        self.cache_errors = Counter(
            "loraplane_cache_errors_total",
            "Requests that went on uncached because the cache store failed or was resting after a failure",
            ["backend"],
            registry=r,
        )
        self.cache_entries = Gauge("loraplane_cache_entries", "Answers held by the in-process cache", registry=r)
        self.cache_bytes = Gauge("loraplane_cache_bytes", "Bytes of answers held by the in-process cache", registry=r)

        # Control plane (serving/store/): feedback and the request log.
        self.feedback = Counter(
            "loraplane_feedback_total",
            "Feedback submissions (POST /v1/feedback) by model and variant",
            ["model", "variant"],
            registry=r,
        )
        # A summary: exposes loraplane_feedback_score_sum (and _count) per model and variant.
        self.feedback_score = Summary(
            "loraplane_feedback_score", "Feedback scores (0..1) by model and variant", ["model", "variant"], registry=r
        )
        self.request_log_dropped = Counter(
            "loraplane_request_log_dropped_total",
            "Request log records not written (writer queue full, or the database slow or down)",
            registry=r,
        )
        self.request_log_rejected = Counter(
            "loraplane_request_log_rejected_total",
            "Request log records the database refused (a bad value); the rest of their batch was written",
            registry=r,
        )
        self.request_log_bodies_skipped = Counter(
            "loraplane_request_log_bodies_skipped_total",
            "Captured bodies not kept: request + response over store.body_capture_max_bytes",
            registry=r,
        )

        # Graders (serving/graders/): answers scored off the request path, per grader and variant.
        self.grader_scored = Counter(
            "loraplane_grader_scored_total", "Answers a grader scored", ["grader", "variant"], registry=r
        )
        self.grader_dropped = Counter(
            "loraplane_grader_dropped_total",
            "Answers sampled for a grader but not graded: the grading queue was full (grading.queue_size)",
            ["grader", "variant"],
            registry=r,
        )
        self.grader_failed = Counter(
            "loraplane_grader_failed_total",
            "Gradings without a score, by reason (timeout, unparsable, error, budget); no score is stored",
            ["grader", "variant", "reason"],
            registry=r,
        )
        self.grader_scores_unsaved = Counter(
            "loraplane_grader_scores_unsaved_total",
            "Grader scores not written: the store writer's score queue was full or the database failed",
            registry=r,
        )
        self.grader_score = Histogram(
            "loraplane_grader_score",
            "Grader scores (0..1); _sum / _count is the mean",
            ["grader", "variant"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )

        # Rollouts (serving/rollouts/): every replica publishes its snapshot's view; the evaluator
        # holding the lease counts decisions (a pause is counted where the database was lost).
        self.rollout_step_percent = Gauge(
            "loraplane_rollout_step_percent", "Candidate's share of the adapter's traffic (%)", ["rollout"], registry=r
        )
        self.rollout_state = Gauge(
            "loraplane_rollout_state", "1 for the rollout's current state", ["rollout", "state"], registry=r
        )
        self.rollout_decisions = Counter(
            "loraplane_rollout_decisions_total",
            "Rollout decisions by outcome (advance, hold, promote, rollback, pause; refused: not written, the "
            "rollout changed meanwhile; error: the rollout could not be evaluated, the others were)",
            ["rollout", "outcome"],
            registry=r,
        )
        # Shadow stage (serving/gateway/shadow.py): requests mirrored to a rollout's candidate, and
        # mirrors skipped because the gateway was at its in-flight share (live requests come first).
        self.shadow_requests = Counter(
            "loraplane_shadow_requests_total",
            "Requests mirrored to a shadow-stage candidate (outcome mirrored) or skipped under load (dropped)",
            ["rollout", "outcome"],
            registry=r,
        )


def status_class(status: int) -> str:
    return f"{status // 100}xx"
