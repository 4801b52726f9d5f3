"""A rollout's numbers, from its request log and feedback (pure: records in, JSON-ready dict out).

The evaluator decides on these numbers and writes them into the audit log; `GET /admin/rollouts/NAME`
returns the same dict. Observations per guard:

- error_rate: 1 for a response with status >= 500 (the engine or the adapter failed), else 0;
- ttft_p95: 1 when the time to first token (the latency for non-streamed responses) is above the
  threshold frozen at the control's p95 over its first min_samples requests of the rollout; the
  control's requests used to set the threshold are left out of the comparison;
- feedback: the scores in [0, 1] given to each variant's responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.rollouts.policy import GuardVerdict, RolloutSpec, evaluate_guard
from serving.rollouts.stats import exceedance, interval
from serving.store import FeedbackRecord, RequestRecord, RolloutRecord

ERROR_STATUS = 500  # statuses at or above count as errors of the variant that answered


@dataclass
class Observations:
    """One variant's sequences in arrival order."""

    times: np.ndarray  # request created_at
    errors: np.ndarray
    ttft: np.ndarray  # TTFT, or latency when the response was not streamed
    latency: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, requests: list[RequestRecord], feedback: list[FeedbackRecord]) -> Observations:
        return cls(
            np.array([r.created_at for r in requests], dtype=np.float64),
            np.array([1.0 if r.status >= ERROR_STATUS else 0.0 for r in requests]),
            np.array([r.ttft_s if r.ttft_s is not None else r.latency_s for r in requests], dtype=np.float64),
            np.array([r.latency_s for r in requests], dtype=np.float64),
            np.array([min(1.0, max(0.0, f.score)) for f in feedback], dtype=np.float64),
        )

    def since(self, t: float) -> int:
        return int((self.times >= t).sum())


def split(
    rollout: RolloutRecord, requests: list[RequestRecord], feedback: list[FeedbackRecord]
) -> tuple[Observations, Observations]:
    """(candidate, control) observations of this rollout."""
    out = []
    for variant in (rollout.candidate, rollout.control):
        ok = [r for r in requests if r.rollout == rollout.name and r.variant == variant]
        rated = [f for f in feedback if f.rollout == rollout.name and f.variant == variant]
        out.append(Observations.of(ok, rated))
    return out[0], out[1]


def ttft_threshold(rollout: RolloutRecord, control: Observations, min_samples: int) -> float | None:
    """The frozen threshold: stored on the rollout once set, else the control's first-min_samples p95."""
    stored = rollout.config.get("ttft_threshold_s")
    if stored is not None:
        return float(stored)
    if control.ttft.size < min_samples:
        return None
    return float(np.quantile(control.ttft[:min_samples], 0.95))


def guard_verdicts(
    spec: RolloutSpec, candidate: Observations, control: Observations, threshold: float | None
) -> list[GuardVerdict]:
    out = []
    for guard in spec.guards:
        if guard.metric == "error_rate":
            c, s = candidate.errors, control.errors
        elif guard.metric == "feedback":
            c, s = candidate.scores, control.scores
        elif threshold is None:  # ttft_p95 before the threshold is frozen
            c, s = np.zeros(0), np.zeros(0)
        else:
            c, s = exceedance(candidate.ttft, threshold), exceedance(control.ttft[spec.min_samples :], threshold)
        out.append(evaluate_guard(spec, guard, c, s))
    return out


def finite(value: Any) -> Any:
    """The same structure with NaN/inf floats as None (strict JSON, PostgreSQL's JSON type)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _quantile(x: np.ndarray, q: float) -> float | None:
    return float(np.quantile(x, q)) if x.size else None


def variant_numbers(version: str, obs: Observations, alpha: float) -> dict[str, Any]:
    n = int(obs.errors.size)
    fb = interval(obs.scores, alpha)
    return {
        "version": version,
        "requests": n,
        "errors": int(obs.errors.sum()),
        "error_rate": float(obs.errors.mean()) if n else None,
        "ttft_p50_s": _quantile(obs.ttft, 0.5),
        "ttft_p95_s": _quantile(obs.ttft, 0.95),
        "latency_p50_s": _quantile(obs.latency, 0.5),
        "latency_p95_s": _quantile(obs.latency, 0.95),
        "feedback": {
            "n": fb.n,
            "mean": fb.mean,
            "ci": [fb.lo, fb.hi],
            "ci_level": 1 - alpha,
        },
    }


def build_report(
    rollout: RolloutRecord, requests: list[RequestRecord], feedback: list[FeedbackRecord]
) -> tuple[dict[str, Any], list[GuardVerdict], tuple[int, int], float | None]:
    """(report dict, guard verdicts, (candidate, control) requests at this step, TTFT threshold)."""
    spec = RolloutSpec.from_json(rollout.config)
    candidate, control = split(rollout, requests, feedback)
    threshold = ttft_threshold(rollout, control, spec.min_samples)
    verdicts = guard_verdicts(spec, candidate, control, threshold)
    step_started = float(rollout.config.get("step_started_at", rollout.created_at))
    at_step = (candidate.since(step_started), control.since(step_started))
    cand_pct = rollout.weights.get(rollout.candidate, 0)
    report = {
        "name": rollout.name,
        "adapter": rollout.adapter,
        "state": rollout.state,
        "reason": rollout.reason,
        "candidate": rollout.candidate,
        "control": rollout.control,
        "step": rollout.step,
        "step_percent": cand_pct,
        "steps": list(spec.steps),
        "weights": dict(rollout.weights),
        "requests_at_step": {"candidate": at_step[0], "control": at_step[1]},
        "min_samples": spec.min_samples,
        "interval_s": spec.interval_s,
        "alpha": spec.alpha,
        "method": spec.method,
        "promote_when": spec.promote_when,
        "ttft_threshold_s": threshold,
        "created_at": rollout.created_at,
        "evaluated_at": rollout.evaluated_at,
        "variants": {
            "candidate": variant_numbers(rollout.candidate, candidate, spec.alpha),
            "control": variant_numbers(rollout.control, control, spec.alpha),
        },
        "guards": [v.to_json() for v in verdicts],
    }
    return finite(report), verdicts, at_step, threshold
