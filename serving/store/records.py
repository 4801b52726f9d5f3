"""Plain records the store hands out and takes in (no ORM objects leave serving/store/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CAPTURE_MODES = ("none", "bodies")
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


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    actor: str
    action: str
    subject: str
    reason: str | None
    numbers: dict[str, Any] | None
