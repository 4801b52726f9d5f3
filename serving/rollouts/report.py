"""A rollout's numbers, from per-unit aggregates (store.UnitStats: per variant, step and user).

The evaluator decides on these numbers and writes them into the audit log; `GET /admin/rollouts/NAME`
returns the same dict. What each guard reads per unit (the user its variant is sticky for) and step:

- error_rate: `errors` of `requests` (outcome "error": the variant failed the request);
- ttft_p95: `ttft_over` of `requests`, the requests whose TTFT (latency when not streamed) was above
  the threshold frozen at the control's p95 over its first min_samples requests of the rollout; those
  requests are taken out of the control's cells, so the threshold is independent of the data it is
  tested on;
- feedback: `score_sum` of `score_n` (scores in [0, 1]);
- grader:NAME: the same fields of that grader's scores (Store.rollout_scores; docs/graders.md).

Statistics (stats.py): capped-weight unit means, compared within each step, combined across steps,
with a cluster-robust variance and an always-valid interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.rollouts.policy import GuardVerdict, RolloutSpec, evaluate_guard
from serving.rollouts.stats import Cells, arm_summaries
from serving.store import RolloutRecord, Store, UnitStats
from serving.store.shadow import SHADOW_STEP

# One control request of the threshold sample: (unit, step, TTFT or latency in seconds).
Sample = tuple[str, int, float]
FIELDS = {
    "error_rate": ("errors", "requests"),
    "ttft_p95": ("ttft_over", "requests"),
    "feedback": ("score_sum", "score_n"),
}


@dataclass(frozen=True)
class Evaluation:
    """What one read of a rollout gives the policy and the people: report, verdicts, step counts."""

    report: dict[str, Any]
    verdicts: list[GuardVerdict]
    step_counts: tuple[int, int]  # (candidate, control) requests at the current step
    control_units: int  # the control's users at the current step
    threshold: float | None  # the TTFT threshold, once frozen


def ttft_threshold(rollout: RolloutRecord, sample: list[Sample], min_samples: int) -> float | None:
    """The frozen threshold: stored on the rollout once set, else the p95 of the control's first
    min_samples requests (None while it has fewer)."""
    stored = rollout.config.get("ttft_threshold_s")
    if stored is not None:
        return float(stored)
    if len(sample) < min_samples:
        return None
    return float(np.quantile([t for _, _, t in sample[:min_samples]], 0.95))


def cells_of(
    units: Iterable[UnitStats], candidate: str, metric: str, held_out: dict[tuple[str, int], tuple[int, int]]
) -> Cells:
    """Dense per-unit cells of one guard: one column per (step, variant) present.

    held_out: (unit, step) -> (requests, over-threshold) of control requests to leave out (the
    TTFT threshold's sample; only for ttft_p95)."""
    total_field, count_field = FIELDS[metric]
    rows = [u for u in units if getattr(u, count_field) > 0]
    unit_index = {u: i for i, u in enumerate(sorted({r.unit for r in rows}))}
    columns = sorted({(r.step, r.variant == candidate) for r in rows})
    col_index = {c: j for j, c in enumerate(columns)}
    total = np.zeros((len(unit_index), len(columns)))
    count = np.zeros_like(total)
    for r in rows:
        i, j = unit_index[r.unit], col_index[r.step, r.variant == candidate]
        n, t = getattr(r, count_field), getattr(r, total_field)
        if metric == "ttft_p95" and r.variant != candidate:
            held_n, held_over = held_out.get((r.unit, r.step), (0, 0))
            n, t = n - held_n, t - held_over
        total[i, j], count[i, j] = t, max(n, 0)
    is_candidate = np.array([c for _, c in columns], dtype=bool)
    strata = np.array([s for s, _ in columns], dtype=np.int64)
    return Cells(total, count, strata, is_candidate)


def held_out_of(
    sample: list[Sample], threshold: float | None, min_samples: int
) -> dict[tuple[str, int], tuple[int, int]]:
    out: dict[tuple[str, int], tuple[int, int]] = {}
    if threshold is None:
        return out
    for unit, step, ttft in sample[:min_samples]:
        n, over = out.get((unit, step), (0, 0))
        out[unit, step] = (n + 1, over + int(ttft > threshold))
    return out


def guard_verdicts(spec: RolloutSpec, cells: dict[str, Cells]) -> list[GuardVerdict]:
    return [evaluate_guard(spec, guard, cells[guard.metric]) for guard in spec.guards]


def finite(value: Any) -> Any:
    """The same structure with NaN/inf floats as None (strict JSON, PostgreSQL's JSON type)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def variant_numbers(version: str, rows: list[UnitStats], feedback: Cells, arm: int, alpha: float) -> dict[str, Any]:
    """Raw totals per request (for people) and the feedback's unit-level mean and interval."""
    requests = sum(r.requests for r in rows)
    errors = sum(r.errors for r in rows)
    over = sum(r.ttft_over for r in rows)
    return {
        "version": version,
        "requests": requests,
        "users": len({r.unit for r in rows if r.requests}),
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "ttft_over_threshold": over / requests if requests else None,
        "feedback": score_summary(feedback, arm, alpha),
    }


def score_summary(cells: Cells, arm: int, alpha: float) -> dict[str, Any]:
    """A variant's unit-level mean score and its interval (feedback, or one grader's scores)."""
    n, users, mean, lo, hi = (a.item() if a.ndim == 0 else a for a in arm_summaries(cells, alpha)[arm])
    return {"n": int(n), "users": int(users), "mean": float(mean), "ci": [float(lo), float(hi)], "ci_level": 1 - alpha}


def stage_of(rollout: RolloutRecord) -> str:
    """shadow (mirrored only, step SHADOW_STEP), canary (a step's share of live traffic), or the end state."""
    if not rollout.active:
        return rollout.state
    return "shadow" if rollout.step == SHADOW_STEP else "canary"


def build_report(
    rollout: RolloutRecord,
    units: list[UnitStats],
    sample: list[Sample],
    graded: dict[str, list[UnitStats]] | None = None,
) -> Evaluation:
    """The rollout's report and verdicts from its per-unit aggregates (units, computed with the
    frozen TTFT threshold), the control's first requests (sample, for the threshold) and, per
    grader guard ("grader:NAME"), that grader's per-unit scores (graded)."""
    spec = RolloutSpec.from_json(rollout.config)
    threshold = ttft_threshold(rollout, sample, spec.min_samples)
    held_out = held_out_of(sample, threshold, spec.min_samples)
    cells = {m: cells_of(units, rollout.candidate, m, held_out) for m in FIELDS}
    for guard in spec.guards:  # a grader's scores are compared as feedback is, per user and step
        if guard.grader is not None:
            rows = (graded or {}).get(guard.metric, [])
            cells[guard.metric] = cells_of(rows, rollout.candidate, "feedback", {})
    if threshold is None:  # ttft_p95 before the threshold is frozen: nothing to compare yet
        cells["ttft_p95"] = cells_of([], rollout.candidate, "ttft_p95", {})
    verdicts = guard_verdicts(spec, cells)
    here = [u for u in units if u.step == rollout.step]
    cand = [u for u in here if u.variant == rollout.candidate]
    ctrl = [u for u in here if u.variant != rollout.candidate]
    at_step = (sum(u.requests for u in cand), sum(u.requests for u in ctrl))
    control_units = len({u.unit for u in ctrl if u.requests})
    report = {
        "name": rollout.name,
        "adapter": rollout.adapter,
        "state": rollout.state,
        "reason": rollout.reason,
        "candidate": rollout.candidate,
        "control": rollout.control,
        "step": rollout.step,
        "stage": stage_of(rollout),
        "shadow_percent": rollout.config.get("shadow"),
        "step_percent": rollout.weights.get(rollout.candidate, 0),
        "steps": list(spec.steps),
        "weights": dict(rollout.weights),
        "requests_at_step": {"candidate": at_step[0], "control": at_step[1]},
        "users_at_step": {"candidate": len({u.unit for u in cand if u.requests}), "control": control_units},
        "min_samples": spec.min_samples,
        "interval_s": spec.interval_s,
        "alpha": spec.alpha,
        "method": spec.method,
        "promote_when": spec.promote_when,
        "better_on": spec.better_on,
        "min_gain": spec.min_gain,
        "ttft_threshold_s": threshold,
        "created_at": rollout.created_at,
        "evaluated_at": rollout.evaluated_at,
        "variants": {
            "candidate": variant_numbers(
                rollout.candidate,
                [u for u in units if u.variant == rollout.candidate],
                cells["feedback"],
                0,
                spec.alpha,
            ),
            "control": variant_numbers(
                rollout.control, [u for u in units if u.variant != rollout.candidate], cells["feedback"], 1, spec.alpha
            ),
        },
        "guards": [v.to_json() for v in verdicts],
    }
    for role, arm in (("candidate", 0), ("control", 1)):
        graders = {g.metric: score_summary(cells[g.metric], arm, spec.alpha) for g in spec.guards if g.grader}
        if graders:
            variants: Any = report["variants"]
            variants[role]["graders"] = graders
    return Evaluation(finite(report), verdicts, at_step, control_units, threshold)


def read_rollout(store: Store, rollout: RolloutRecord) -> Evaluation:
    """The evaluator's and the status page's read: aggregates in SQL, never request rows.

    Two bounded queries: the control's first min_samples TTFTs (the threshold's sample) and the
    per-unit aggregates with the threshold (in the shadow stage: the shadow step's, mirrored rows included)."""
    spec = RolloutSpec.from_json(rollout.config)
    sample = store.control_ttft_sample(rollout.name, rollout.control, spec.min_samples)
    threshold = ttft_threshold(rollout, sample, spec.min_samples)
    # The shadow stage compares the candidate's mirrored answers with the control's live ones
    # (store/shadow.py); the canary steps count live rows only.
    shadow = rollout.step == SHADOW_STEP
    units_of = store.shadow_units if shadow else store.rollout_units
    units = units_of(rollout.name, ttft_threshold_s=threshold)
    scores_of = store.shadow_scores if shadow else store.rollout_scores
    graded = {g.metric: scores_of(rollout.name, g.metric) for g in spec.guards if g.grader is not None}
    return build_report(rollout, units, sample, graded)
