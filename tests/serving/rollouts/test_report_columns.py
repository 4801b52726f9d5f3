"""The columnar report (store.UnitTable, vectorised cells) equals the per-row report it replaced.

`reference_*` below is the implementation before the columns, verbatim but for names: one Python
object per (variant, step, unit) and loops over them. Random rollouts (steps, the shadow step,
units that change variant between steps, zero-count rows, a held-out TTFT sample, grader scores)
go through both; reports, verdicts and counts must agree to 1e-9. And the store's reads give the
same rows on SQLite and PostgreSQL, whether units have one length (PostgreSQL's one-frombuffer
path) or not (element by element), ASCII or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from serving.config import RolloutsConfig
from serving.rollouts.actions import new_rollout
from serving.rollouts.policy import GuardSpec, RolloutSpec
from serving.rollouts.report import (
    FIELDS,
    Evaluation,
    build_report,
    cells_of,
    finite,
    held_out_of,
    score_summary,
    stage_of,
    ttft_threshold,
)
from serving.rollouts.stats import Cells
from serving.store import FeedbackRecord, RequestRecord, RolloutRecord, Store, UnitStats, UnitTable

CAND, CTRL = "bot@v2", "bot@v10"  # names of different lengths, as after nine versions


# --- the per-row implementation (before UnitTable), kept as the reference ------------------------


def reference_cells_of(
    units: Iterable[UnitStats], candidate: str, metric: str, held_out: dict[tuple[str, int], tuple[int, int]]
) -> Cells:
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


def reference_variant_numbers(version: str, rows: list[UnitStats], feedback: Cells, arm: int, alpha: float) -> dict:
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


def reference_build_report(
    rollout: RolloutRecord, units: list[UnitStats], sample: list, graded: dict[str, list[UnitStats]]
) -> Evaluation:
    from serving.rollouts.policy import evaluate_guard

    spec = RolloutSpec.from_json(rollout.config)
    threshold = ttft_threshold(rollout, sample, spec.min_samples)
    held_out = held_out_of(sample, threshold, spec.min_samples)
    cells = {m: reference_cells_of(units, rollout.candidate, m, held_out) for m in FIELDS}
    for guard in spec.guards:
        if guard.grader is not None:
            cells[guard.metric] = reference_cells_of(graded.get(guard.metric, []), rollout.candidate, "feedback", {})
    if threshold is None:
        cells["ttft_p95"] = reference_cells_of([], rollout.candidate, "ttft_p95", {})
    verdicts = [evaluate_guard(spec, guard, cells[guard.metric]) for guard in spec.guards]
    here = [u for u in units if u.step == rollout.step]
    cand = [u for u in here if u.variant == rollout.candidate]
    ctrl = [u for u in here if u.variant != rollout.candidate]
    at_step = (sum(u.requests for u in cand), sum(u.requests for u in ctrl))
    control_units = len({u.unit for u in ctrl if u.requests})
    by_variant = {
        role: [u for u in units if (u.variant == rollout.candidate) == (role == "candidate")]
        for role in ("candidate", "control")
    }
    report: dict[str, Any] = {
        "stage": stage_of(rollout),
        "requests_at_step": {"candidate": at_step[0], "control": at_step[1]},
        "users_at_step": {"candidate": len({u.unit for u in cand if u.requests}), "control": control_units},
        "ttft_threshold_s": threshold,
        "variants": {
            role: reference_variant_numbers(version, by_variant[role], cells["feedback"], arm, spec.alpha)
            for role, version, arm in (("candidate", rollout.candidate, 0), ("control", rollout.control, 1))
        },
        "guards": [v.to_json() for v in verdicts],
    }
    for role, arm in (("candidate", 0), ("control", 1)):
        graders = {g.metric: score_summary(cells[g.metric], arm, spec.alpha) for g in spec.guards if g.grader}
        if graders:
            report["variants"][role]["graders"] = graders
    return Evaluation(finite(report), verdicts, at_step, control_units, threshold)


# --- random rollouts ------------------------------------------------------------------------------


def random_rollout(rng: np.random.Generator, users: int, steps: list[int]) -> tuple[list[UnitStats], list]:
    """Per-unit rows of a rollout over `steps` (SHADOW_STEP -1 included where given): each user is
    on one variant per step (the share grows, so some move to the candidate), some rows count
    nothing, some have no feedback; and the control's first requests (the threshold's sample)."""
    names = [f"u{i}" * (1 + i % 3) for i in range(users)]  # units of several lengths
    rows = []
    for k, step in enumerate(steps):
        share = (k + 1) / (len(steps) + 1)
        for i, unit in enumerate(names):
            if rng.random() < 0.3:
                continue  # not seen at this step
            variant = CAND if (i * 0.618) % 1 < share else CTRL
            n = int(rng.integers(0, 12))  # 0: a row that counts nothing
            errors, over = int(rng.binomial(n, 0.1)), int(rng.binomial(n, 0.2))
            rated = int(rng.integers(0, n + 1)) if rng.random() < 0.6 else 0
            rows.append(UnitStats(variant, step, unit, n, errors, over, float(rng.random() * rated), rated))
    control = [u for u in rows if u.variant == CTRL and u.requests]
    sample = [(u.unit, u.step, float(rng.exponential(0.2))) for u in control[: len(control) // 2]]
    sample += [("nobody", steps[0], 0.5), (names[0], 99, 0.9)]  # held out, but in no row
    return rows, sample


def grader_rows(rng: np.random.Generator, rows: list[UnitStats]) -> list[UnitStats]:
    return [
        UnitStats(u.variant, u.step, u.unit, 0, 0, 0, float(rng.random() * k), k)
        for u in rows
        if (k := int(rng.integers(0, 4))) or rng.random() < 0.1
    ]


def assert_close(new: Any, old: Any, path: str = "report") -> None:
    if isinstance(old, dict):
        assert new.keys() == old.keys(), path
        for key in old:
            assert_close(new[key], old[key], f"{path}.{key}")
    elif isinstance(old, (list, tuple)):
        assert len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and not isinstance(new, str):
        both_nan = math.isnan(old) and new is not None and math.isnan(new)
        assert both_nan or (new is not None and math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-9)), path
    else:
        assert new == old, path


@pytest.mark.parametrize("seed", range(12))
def test_the_columnar_report_equals_the_per_row_report(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = [-1, 0, 1, 2] if seed % 3 == 0 else [0, 1, 2]
    rows, sample = random_rollout(rng, users=int(rng.integers(5, 80)), steps=steps)
    graded = {"grader:valid": grader_rows(rng, rows)}
    guards = tuple(GuardSpec.parse(g) for g in ("error_rate:0", "ttft_p95:0", "feedback:0", "grader:valid:0"))
    spec = RolloutsConfig().spec(min_samples=int(rng.integers(1, 30)), steps=(10, 50, 100), guards=guards)
    rollout = new_rollout("r", CAND, CTRL, spec, "none", 1000.0)
    if seed % 4 == 1:  # a threshold already frozen (else: the sample's p95, or none while it is short)
        rollout = replace(rollout, config={**rollout.config, "ttft_threshold_s": 0.3})
    for step in (steps[0], steps[-1]):
        rollout = replace(rollout, step=step)
        old = reference_build_report(rollout, rows, sample, graded)
        table = {k: UnitTable.of(v) for k, v in graded.items()}
        new = build_report(rollout, UnitTable.of(rows), sample, table)
        assert (new.step_counts, new.control_units) == (old.step_counts, old.control_units)
        assert new.threshold == old.threshold
        assert_close([v.to_json() for v in new.verdicts], [v.to_json() for v in old.verdicts], "verdicts")
        assert_close({k: new.report[k] for k in old.report}, old.report)


@pytest.mark.parametrize("seed", range(6))
def test_the_columnar_cells_equal_the_per_row_cells(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    rows, sample = random_rollout(rng, users=40, steps=[-1, 0, 1])
    held = held_out_of(sample, 0.2, len(sample))
    assert held  # the sample is held out of some control rows
    for metric in FIELDS:
        old = reference_cells_of(rows, CAND, metric, held)
        new = cells_of(UnitTable.of(rows), CAND, metric, held)
        for field in ("total", "count", "strata", "candidate"):
            assert np.array_equal(getattr(new, field), getattr(old, field)), (metric, field)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]  # the table's row order does not matter
    assert np.array_equal(cells_of(UnitTable.of(shuffled), CAND, "feedback", {}).total, old.total)


def test_a_unit_table_round_trips_its_rows_and_finds_units_by_name() -> None:
    rows = [UnitStats(CTRL, 0, "b", 3, 1, 0, 0.5, 1), UnitStats(CAND, 1, "ä", 2, 0, 1, 0.0, 0)]
    table = UnitTable.of(rows)
    assert sorted(table) == sorted(rows) and len(table) == 2
    assert table.variants == (CTRL, CAND) and table.unit_codes(["ä", "a", "b"]).tolist() == [1, -1, 0]
    assert table.units_with_requests(table.is_variant(CTRL)) == 1 and len(UnitTable.empty()) == 0


def write(store: Store, units: list[str]) -> list[UnitStats]:
    """Requests (and some feedback) of `units` on both variants and two steps; the rows the store
    should count, by a recount in Python."""
    records, scores, expected = [], [], {}
    for i in range(300):
        unit, variant, step = units[i % len(units)], (CAND, CTRL)[i % 2], (i // 7) % 2
        record = RequestRecord(f"id-{i}", float(i), "chat", "bot", variant, "k", 200, 0.1 + (i % 5) / 10, rollout="r")
        record.unit, record.step, record.outcome = unit, step, "error" if i % 11 == 0 else "ok"
        record.ttft_s = None if i % 3 == 0 else 0.05 * (i % 7)
        records.append(record)
        n, e, o, t, k = expected.get((variant, step, unit), (0, 0, 0, 0.0, 0))
        latency = record.latency_s if record.ttft_s is None else record.ttft_s
        rated = i % 3 == 0
        expected[variant, step, unit] = (n + 1, e + (i % 11 == 0), o + (latency > 0.2), t + rated * i / 300, k + rated)
        if rated:
            scores.append(FeedbackRecord(record.id, i / 300, "k", "bot", variant, "r", unit=unit, step=step))
    store.write_requests(records)
    store.put_feedback(scores)
    return sorted(UnitStats(v, st, u, *cell) for (v, st, u), cell in expected.items())


@pytest.mark.parametrize(
    "units",
    [[f"{i:032x}" for i in range(23)], ["a", "bb", "ccc", "user-ä", "日本"]],
    ids=["one-length", "mixed-lengths-and-utf8"],
)
def test_the_store_reads_the_same_rows_on_both_databases(store: Store, units: list[str]) -> None:
    expected = write(store, units)
    got = sorted(store.rollout_units("r", ttft_threshold_s=0.2))
    assert [u[:6] for u in got] == [u[:6] for u in expected]
    assert [u.score_n for u in got] == [u.score_n for u in expected]
    assert np.allclose([u.score_sum for u in got], [u.score_sum for u in expected])
    scores = sorted(store.rollout_scores("r", "user"))
    rated = [u for u in expected if u.score_n]
    assert [(u.variant, u.step, u.unit, u.score_n) for u in scores] == [u[:3] + (u.score_n,) for u in rated]
    assert {u.variant for u in scores} == {CAND, CTRL}
    assert len(store.rollout_units("nothing", ttft_threshold_s=None)) == 0
