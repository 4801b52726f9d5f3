"""Plain records the store hands out and takes in (no ORM objects leave serving/store/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

CAPTURE_MODES = ("none", "bodies")
USER_SOURCE = "user"  # FeedbackRecord.source of POST /v1/feedback; graders write "grader:NAME"
# What a request's outcome means for the variant that was chosen for it. Only "error" counts
# against the variant; "client_closed" (logged as status 499) and "client_error" (the caller's own
# bad request) do not.
OUTCOMES = ("ok", "error", "client_closed", "client_error")
ERROR_KINDS = ("load_failed", "upstream_status", "unavailable", "timeout", "stream_error", "truncated")
# Why a logged request is left out of rollout statistics: it was pinned to a variant by the caller,
# it was a control's answer given after the assigned candidate failed (the failure is counted on
# the candidate's own row), it was served from a cache, or it is a rollout candidate's answer to a
# request mirrored in the shadow stage (never returned to anyone; counted only by that stage's
# statistics: serving/rollouts/shadow.py).
EXCLUSIONS = ("pinned", "fallback", "cached", "shadow")
UNIT_LEN = 32
ROLLOUT_STATES = ("running", "paused", "promoted", "rolled_back")
ACTIVE_ROLLOUT_STATES = ("running", "paused")  # states in which a rollout splits traffic


@dataclass(frozen=True)
class ExperimentRecord:
    name: str
    variants: dict[str, int]  # "adapter@vN" -> weight
    capture: str = "none"  # "bodies": store request/response bodies of its requests
    updated_at: float = 0.0


@dataclass(frozen=True)
class RolloutRecord:
    name: str
    adapter: str  # the adapter name whose traffic is split
    candidate: str  # adapter@vN
    control: str  # adapter@vM (the stable version when it started)
    state: str  # one of ROLLOUT_STATES
    weights: dict[str, int]  # "adapter@vN" -> weight, what the gateway splits by
    config: dict[str, Any] = field(default_factory=dict)  # steps, guards, alpha, capture, ...
    step: int = 0
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    evaluated_at: float | None = None
    revision: int = 0  # see models.RolloutRow.revision

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES

    @property
    def capture(self) -> str:
        return str(self.config.get("capture", "none"))


@dataclass(frozen=True)
class ControlSnapshot:
    """Everything the request path reads from the store, loaded in one transaction."""

    version: int
    experiments: dict[str, ExperimentRecord]
    stable: dict[str, str]  # adapter name -> version
    rollouts: dict[str, RolloutRecord]  # by rollout name (all states)

    def active_rollout(self, adapter: str) -> RolloutRecord | None:
        for rollout in self.rollouts.values():
            if rollout.adapter == adapter and rollout.active:
                return rollout
        return None


@dataclass
class RequestRecord:
    """One completion, as logged; `id` is the response id the client received."""

    id: str
    created_at: float
    route: str
    model: str
    variant: str
    key_name: str
    status: int
    latency_s: float
    experiment: str | None = None
    rollout: str | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_body: Any | None = None
    response_text: str | None = None
    # Rollout statistics (docs/rollouts.md): the unit of assignment, the step whose weights chose the
    # variant, what the outcome means for the variant, and why a row is left out of the statistics.
    unit: str | None = None  # UNIT_LEN hex chars of sha256(A/B key): the user the variant is sticky for
    step: int | None = None  # the rollout's step index whose weights assigned this request
    outcome: str = "ok"  # one of OUTCOMES
    error_kind: str | None = None  # bounded: why an outcome is "error" (ERROR_KINDS)
    excluded: str | None = None  # None = counted; else why not (EXCLUSIONS)
    mirror_of: str | None = None  # a shadow stage's mirrored row: the id of the live row it repeats


@dataclass(frozen=True)
class FeedbackRecord:
    response_id: str
    score: float
    key_name: str
    model: str
    variant: str
    rollout: str | None = None
    label: str | None = None
    comment: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # Copied from the rated request's log row, so per-unit feedback needs no join.
    unit: str | None = None
    step: int | None = None
    excluded: str | None = None
    source: str = "user"  # who scored: "user" (POST /v1/feedback) or "grader:NAME" (serving/graders/)
    correction: str | None = None  # the user's own answer to the request (POST /v1/feedback `correction`)


class UnitStats(NamedTuple):
    """One assignment unit's aggregate for one variant at one rollout step: what the rollout's
    statistics read (never rows). `ttft_over` counts requests whose TTFT (or latency, unstreamed)
    was above the threshold the query was given (0 when it was given none). One row of a
    UnitTable (unit_table.py), which holds a rollout's rows as columns."""

    variant: str
    step: int
    unit: str
    requests: int
    errors: int
    ttft_over: int
    score_sum: float
    score_n: int


class StepMoments(NamedTuple):
    """The sums over the units of one variant at one step that a cluster-robust (per-user, delta
    method) test needs, computed in SQL from the UnitStats cells: O(variants x steps) rows however
    many users. For a per-unit pair (x, y) -- (requests, errors), (requests, ttft_over),
    (score_n, score_sum) -- it holds sum x, sum x^2, sum y, sum y^2 and sum x*y. Floats (exact to 2^53)."""

    variant: str
    step: int
    units: int  # units with at least one counted request
    requests: float
    requests_sq: float
    errors: float
    errors_sq: float
    errors_x_requests: float
    ttft_over: float
    ttft_over_sq: float
    ttft_over_x_requests: float
    rated_units: int  # units with at least one score
    score_n: float
    score_n_sq: float
    score_sum: float
    score_sum_sq: float
    score_sum_x_n: float


@dataclass(frozen=True)
class Lease:
    """A lease as its holder took it: `token` (the fencing token) goes up each time a new term
    starts (another holder, or the same one after it lapsed); `expires_at` is on the database's clock."""

    name: str
    holder: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    actor: str
    action: str
    subject: str
    reason: str | None
    numbers: dict[str, Any] | None


@dataclass(frozen=True)
class UsageRecord:
    """One key's requests and tokens on one model on one UTC day (`day`: YYYY-MM-DD)."""

    day: str
    key_name: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
