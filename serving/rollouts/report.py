"""A rollout's numbers, from per-unit aggregates (store.UnitTable: per variant, step and user, as
numpy columns; every sum here is vectorised over its rows).

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

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.rollouts.policy import GuardVerdict, RolloutSpec, evaluate_guard
from serving.rollouts.stats import Cells, arm_summaries
from serving.store import RolloutRecord, Store, UnitTable
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


HeldOut = dict[tuple[str, int], tuple[int, int]]  # (unit, step) -> (requests, over threshold)


def cells_of(units: UnitTable, candidate: str, metric: str, held_out: HeldOut) -> Cells:
    """Dense per-unit cells of one guard: one column per (step, variant) present, one row per unit
    with a count (sorted by unit name).

    held_out: (unit, step) -> (requests, over-threshold) of control requests to leave out (the
    TTFT threshold's sample; only for ttft_p95)."""
    total_field, count_field = FIELDS[metric]
    keep = getattr(units, count_field) > 0
    count = getattr(units, count_field)[keep]
    total = getattr(units, total_field)[keep].astype(np.float64)
    candidate_row = units.is_variant(candidate)[keep]
    if metric == "ttft_p95" and held_out:
        held_n, held_over = held_out_rows(units, candidate, held_out)
        count, total = count - held_n[keep], total - held_over[keep]
    unit_rows, row = distinct(units.unit[keep], len(units.units))  # unit codes follow the sorted names
    # A column per (step, variant): key 2 * step + is_candidate sorts as (step, control < candidate).
    columns, column = distinct(2 * units.step[keep] + candidate_row)
    dense_total = np.zeros((len(unit_rows), len(columns)))
    dense_count = np.zeros_like(dense_total)
    dense_total[row, column] = total
    dense_count[row, column] = np.maximum(count, 0)
    return Cells(dense_total, dense_count, columns // 2, columns % 2 == 1)


def distinct(values: NDArray, size: int | None = None) -> tuple[NDArray, NDArray]:
    """(sorted distinct values, each value's index into them), as np.unique(return_inverse=True).
    Small non-negative integer codes below `size` (or a small range) are counted into a table
    instead of sorted: O(rows + size)."""
    if values.size == 0:
        return values[:0], np.zeros(0, dtype=np.int64)
    low = 0 if size is not None else int(values.min())
    size = size if size is not None else int(values.max()) - low + 1
    if size > 4 * values.size + 1024:
        return np.unique(values, return_inverse=True)
    present = np.zeros(size, dtype=bool)
    present[values - low] = True
    return np.flatnonzero(present) + low, (np.cumsum(present) - 1)[values - low]


def held_out_rows(units: UnitTable, candidate: str, held_out: HeldOut) -> tuple[NDArray, NDArray]:
    """Per row of `units`: the held-out (requests, over threshold) to subtract -- on the control's
    rows whose (unit, step) is in `held_out`, 0 elsewhere."""
    held_n = np.zeros(len(units), dtype=np.int64)
    held_over = np.zeros(len(units), dtype=np.int64)
    keys = list(held_out)
    codes = units.unit_codes([unit for unit, _ in keys])
    by_code = {(int(c), step): held_out[unit, step] for c, (unit, step) in zip(codes, keys, strict=True) if c >= 0}
    rows = np.isin(units.unit, codes[codes >= 0]) & ~units.is_variant(candidate)
    for i in np.flatnonzero(rows).tolist():  # at most a few rows per held-out request
        n, over = by_code.get((int(units.unit[i]), int(units.step[i])), (0, 0))
        held_n[i], held_over[i] = n, over
    return held_n, held_over


def held_out_of(sample: list[Sample], threshold: float | None, min_samples: int) -> HeldOut:
    out: HeldOut = {}
    if threshold is None:
        return out
    for unit, step, ttft in sample[:min_samples]:
        n, over = out.get((unit, step), (0, 0))
        out[unit, step] = (n + 1, over + int(ttft > threshold))
    return out


def guard_verdicts(
    spec: RolloutSpec, units: UnitTable, candidate: str, held_out: HeldOut | None, graded: dict[str, UnitTable]
) -> tuple[list[GuardVerdict], dict[str, Cells]]:
    """Each guard's verdict, and the cells the report shows beside them: feedback's and each
    grader's. One guard's cells at a time (a rollout's dense cells are units x columns each).
    held_out None: the TTFT threshold is not frozen yet, so ttft_p95 has nothing to compare."""

    def cells_for(metric: str, grader: bool) -> Cells:
        if grader:  # a grader's scores are compared as feedback is, per user and step
            return cells_of(graded.get(metric, UnitTable.empty()), candidate, "feedback", {})
        if metric == "ttft_p95" and held_out is None:
            return cells_of(UnitTable.empty(), candidate, metric, {})
        return cells_of(units, candidate, metric, held_out or {})

    shown: dict[str, Cells] = {}
    verdicts = []
    for guard in spec.guards:
        cells = shown.get(guard.metric) or cells_for(guard.metric, guard.grader is not None)
        verdicts.append(evaluate_guard(spec, guard, cells))
        if guard.grader is not None or guard.metric == "feedback":
            shown[guard.metric] = cells
    if "feedback" not in shown:
        shown["feedback"] = cells_for("feedback", False)
    return verdicts, shown


def finite(value: Any) -> Any:
    """The same structure with NaN/inf floats as None (strict JSON, PostgreSQL's JSON type)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def variant_numbers(
    version: str, units: UnitTable, rows: NDArray[np.bool_], feedback: Cells, arm: int, alpha: float
) -> dict[str, Any]:
    """Raw totals per request over `rows` of units (for people) and the feedback's unit-level mean
    and interval."""
    requests, errors, over = (int(x.sum(where=rows)) for x in (units.requests, units.errors, units.ttft_over))
    return {
        "version": version,
        "requests": requests,
        "users": units.units_with_requests(rows),
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
    units: UnitTable,
    sample: list[Sample],
    graded: dict[str, UnitTable] | None = None,
) -> Evaluation:
    """The rollout's report and verdicts from its per-unit aggregates (units, computed with the
    frozen TTFT threshold), the control's first requests (sample, for the threshold) and, per
    grader guard ("grader:NAME"), that grader's per-unit scores (graded)."""
    spec = RolloutSpec.from_json(rollout.config)
    threshold = ttft_threshold(rollout, sample, spec.min_samples)
    held_out = held_out_of(sample, threshold, spec.min_samples) if threshold is not None else None
    verdicts, cells = guard_verdicts(spec, units, rollout.candidate, held_out, graded or {})
    is_candidate = units.is_variant(rollout.candidate)
    here = units.step == rollout.step
    at_step = (int(units.requests.sum(where=here & is_candidate)), int(units.requests.sum(where=here & ~is_candidate)))
    control_units = units.units_with_requests(here & ~is_candidate)
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
        "users_at_step": {"candidate": units.units_with_requests(here & is_candidate), "control": control_units},
        "min_samples": spec.min_samples,
        "interval_s": spec.interval_s,
        "alpha": spec.alpha,
        "stages": spec.stages,  # 2 with a shadow stage: each guard is tested at alpha / (guards x stages)
        "guard_alpha": spec.guard_alpha,
        "method": spec.method,
        "promote_when": spec.promote_when,
        "better_on": spec.better_on,
        "min_gain": spec.min_gain,
        "ttft_threshold_s": threshold,
        "created_at": rollout.created_at,
        "evaluated_at": rollout.evaluated_at,
        "variants": {
            "candidate": variant_numbers(rollout.candidate, units, is_candidate, cells["feedback"], 0, spec.alpha),
            "control": variant_numbers(rollout.control, units, ~is_candidate, cells["feedback"], 1, spec.alpha),
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
