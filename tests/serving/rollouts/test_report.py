"""The read path: per-unit aggregates from the real store (SQLite and PostgreSQL) -> report ->
verdicts -> the evaluator's decision, with the TTFT threshold's sample held out of the comparison."""

from __future__ import annotations

import pytest

from serving.config import RolloutsConfig
from serving.metrics import GatewayMetrics
from serving.rollouts.actions import new_rollout
from serving.rollouts.evaluator import Evaluator
from serving.rollouts.report import build_report, cells_of, held_out_of, read_rollout
from serving.store import FeedbackRecord, RequestRecord, RolloutRecord, Store, UnitStats, UnitTable

CAND, CTRL = "bot@v2", "bot@v1"


def rollout(name: str = "r", min_samples: int = 40, **config: object) -> RolloutRecord:
    spec = RolloutsConfig().spec(min_samples=min_samples, **config)
    return new_rollout(name, CAND, CTRL, spec, "none", 1000.0)


def log(store: Store, name: str, users: int, variant: str, *, failing: bool = False, at: float = 0) -> None:
    """Each user sends 3 requests to `variant` at step 0 (TTFT 0.1 s, the third 0.9 s); each is rated 1."""
    records, scores = [], []
    for u in range(users):
        for k in range(3):
            rid, unit = f"{name}-{variant}-{u}-{k}", f"{variant}-{u:03d}"
            records.append(
                RequestRecord(
                    rid,
                    at + u + k / 10,
                    "chat",
                    "bot",
                    variant,
                    "key",
                    500 if failing else 200,
                    1.0,
                    rollout=name,
                    ttft_s=0.9 if k == 2 else 0.1,
                    unit=unit,
                    step=0,
                    outcome="error" if failing else "ok",
                    error_kind="upstream_status" if failing else None,
                )  # fmt: skip
            )
            scores.append(FeedbackRecord(rid, 1.0, "key", "bot", variant, rollout=name, unit=unit, step=0))
    store.write_requests(records)
    store.put_feedback(scores)


def test_a_candidate_failing_for_everyone_is_rolled_back_from_the_aggregates(store: Store) -> None:
    store.create_rollout(rollout(), actor="test")
    log(store, "r", 30, CTRL)
    log(store, "r", 30, CAND, failing=True, at=0.05)
    d = dict(Evaluator(store, RolloutsConfig(), GatewayMetrics(), holder="t").tick())["r"]  # under its lease
    assert d is not None and d.outcome == "rollback" and "error_rate" in d.reason
    after = store.get_rollout("r")
    assert after is not None and after.state == "rolled_back"
    report = store.audit_log("r")[-1].numbers["report"]  # type: ignore[index]
    assert report["variants"]["candidate"]["users"] == 30 and report["variants"]["candidate"]["error_rate"] == 1.0
    assert report["ttft_threshold_s"] == pytest.approx(0.9)  # p95 of the control's first 40: one in three is 0.9


def test_a_candidate_that_logged_nothing_is_rolled_back_with_that_reason(store: Store) -> None:
    store.create_rollout(rollout(steps=(50, 100), promote_when="not_worse"), actor="test")
    log(store, "r", 30, CTRL)  # 90 control requests from 30 users, the candidate's never logged
    d = dict(Evaluator(store, RolloutsConfig(), GatewayMetrics(), holder="t").tick())["r"]  # under its lease
    assert d is not None and d.outcome == "rollback"
    assert "candidate has no observations at step 50% while control has 90 requests from 30 users" in d.reason


def test_read_rollout_reads_what_was_logged_and_holds_the_threshold_sample_out(store: Store) -> None:
    r = store.create_rollout(rollout(), actor="test")
    log(store, "r", 30, CTRL)
    log(store, "r", 25, CAND, at=0.05)
    read = read_rollout(store, r)
    assert read.step_counts == (75, 90) and read.control_units == 30
    assert read.threshold == pytest.approx(0.9)
    ttft = next(g for g in read.report["guards"] if g["metric"] == "ttft_p95")
    assert ttft["control"]["n"] == 90 - 40  # the first 40 control requests set the threshold
    fb = read.report["variants"]["candidate"]["feedback"]
    assert fb["n"] == 75 and fb["users"] == 25 and fb["mean"] == 1.0
    assert [v.metric for v in read.verdicts] == ["error_rate", "ttft_p95", "feedback"]


def test_units_in_two_steps_are_one_cluster_and_steps_are_separate_strata() -> None:
    units = [
        UnitStats(CTRL, 0, "a", 10, 1, 0, 0.0, 0),
        UnitStats(CAND, 1, "a", 10, 1, 0, 0.0, 0),  # the same user, moved to the candidate at 50%
        UnitStats(CTRL, 1, "b", 5, 0, 0, 0.0, 0),
        UnitStats(CAND, 0, "c", 4, 0, 0, 0.0, 0),
    ]
    cells = cells_of(UnitTable.of(units), CAND, "error_rate", {})
    assert cells.total.shape == (3, 4)  # units a, b, c x (step 0, 1) x (control, candidate)
    assert cells.strata.tolist() == [0, 0, 1, 1] and cells.candidate.tolist() == [False, True, False, True]
    assert cells.count[0].tolist() == [10, 0, 0, 10]


def test_the_held_out_sample_is_subtracted_from_the_control_cells_only() -> None:
    sample = [("a", 0, 0.1), ("a", 0, 2.0), ("b", 0, 0.1)]
    held = held_out_of(sample, 1.0, 3)
    assert held == {("a", 0): (2, 1), ("b", 0): (1, 0)}
    units = [UnitStats(CTRL, 0, "a", 5, 0, 3, 0.0, 0), UnitStats(CAND, 0, "a2", 5, 0, 3, 0.0, 0)]
    cells = cells_of(UnitTable.of(units), CAND, "ttft_p95", held)
    assert cells.count.sum(axis=0).tolist() == [3, 5] and cells.total.sum(axis=0).tolist() == [2, 3]


def test_before_the_threshold_is_frozen_the_latency_guard_is_pending() -> None:
    r = rollout()
    units = [UnitStats(v, 0, f"{v}{i}", 10, 0, 0, 0.0, 0) for v in (CAND, CTRL) for i in range(30)]
    read = build_report(r, UnitTable.of(units), sample=[("x", 0, 0.1)] * 10)
    assert read.threshold is None
    assert next(v for v in read.verdicts if v.metric == "ttft_p95").verdict == "pending"
