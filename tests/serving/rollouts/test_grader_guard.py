"""A rollout guard on a grader's score (`grader:NAME:MARGIN`) on the real store (SQLite and
PostgreSQL): grader scores sit beside user feedback with their own source, are compared per user
like feedback, roll back a candidate whose JSON validity is worse, and never enter the feedback guard."""

from __future__ import annotations

import pytest

from serving.config import RolloutsConfig
from serving.metrics import GatewayMetrics
from serving.rollouts.evaluator import Evaluator
from serving.rollouts.policy import GuardSpec
from serving.store import FeedbackRecord, Store
from tests.serving.rollouts.test_report import CAND, CTRL, log, rollout

SOURCE = "grader:json_valid"


def grade(store: Store, name: str, users: int, variant: str, valid_every: int) -> None:
    """The grader's score of each request `log` wrote: 1 for every `valid_every`-th, else 0."""
    scores = []
    for u in range(users):
        for k in range(3):
            rid, unit = f"{name}-{variant}-{u}-{k}", f"{variant}-{u:03d}"
            ok = 1.0 if (u * 3 + k) % valid_every == 0 else 0.0
            scores.append(FeedbackRecord(rid, ok, SOURCE, "bot", variant, name, unit=unit, step=0, source=SOURCE))
    store.put_feedback(scores)


def evaluate(store: Store):
    return dict(Evaluator(store, RolloutsConfig(), GatewayMetrics(), holder="t").tick())["r"]


def test_a_candidate_with_worse_json_validity_is_rolled_back_by_the_grader_guard(store: Store) -> None:
    guards = (GuardSpec.parse("feedback:0"), GuardSpec.parse(f"{SOURCE}:0"))
    store.create_rollout(rollout(guards=guards, promote_when="not_worse"), actor="test")
    log(store, "r", 30, CTRL)  # users rate every answer 1 on both versions
    log(store, "r", 30, CAND, at=0.05)
    grade(store, "r", 30, CTRL, valid_every=1)  # every control answer is valid JSON
    grade(store, "r", 30, CAND, valid_every=3)  # a third of the candidate's
    assert store.get_feedback("r-bot@v2-0-1").score == 1.0  # the user's score ...
    assert store.get_feedback("r-bot@v2-0-1", SOURCE).score == 0.0  # ... and the grader's, side by side
    d = evaluate(store)
    assert d is not None and d.outcome == "rollback" and f"guard {SOURCE}" in d.reason
    assert store.get_rollout("r").state == "rolled_back"
    report = store.audit_log("r")[-1].numbers["report"]
    verdicts = {g["metric"]: g["verdict"] for g in report["guards"]}
    assert verdicts[SOURCE] == "fail" and verdicts["feedback"] != "fail"
    cand, ctrl = report["variants"]["candidate"], report["variants"]["control"]
    assert cand["graders"][SOURCE]["mean"] == pytest.approx(1 / 3, abs=0.02) and ctrl["graders"][SOURCE]["mean"] == 1
    assert cand["feedback"]["n"] == 90 and cand["feedback"]["mean"] == 1.0  # grader rows stay out of feedback


def test_grader_scores_decide_nothing_without_a_grader_guard(store: Store) -> None:
    store.create_rollout(rollout(guards=(GuardSpec("feedback", 0.0),), steps=(50, 80, 100)), actor="test")
    log(store, "r", 30, CTRL)
    log(store, "r", 30, CAND, at=0.05)
    grade(store, "r", 30, CAND, valid_every=10)  # bad JSON, but nobody guards it
    d = evaluate(store)
    assert d is not None and d.outcome == "advance"


def test_equal_validity_is_not_a_failure(store: Store) -> None:
    guards = (GuardSpec.parse(f"{SOURCE}:0.05"),)
    store.create_rollout(rollout(guards=guards, promote_when="no_regression", steps=(50, 80, 100)), actor="test")
    log(store, "r", 30, CTRL)
    log(store, "r", 30, CAND, at=0.05)
    grade(store, "r", 30, CTRL, valid_every=2)
    grade(store, "r", 30, CAND, valid_every=2)
    d = evaluate(store)
    assert d is not None and d.outcome == "advance"
    units = store.rollout_scores("r", SOURCE)
    assert len(units) == 60 and sum(u.score_n for u in units) == 180


def test_guard_spec_parses_grader_guards() -> None:
    spec = GuardSpec.parse("grader:json_valid:0.02")
    assert (spec.metric, spec.margin, spec.grader, spec.higher_is_better) == (
        "grader:json_valid",
        0.02,
        "json_valid",
        True,
    )
    assert GuardSpec.parse("error_rate:0.01").grader is None
    with pytest.raises(ValueError, match="grader name must match"):
        GuardSpec.parse("grader:Bad Name:0")
    with pytest.raises(ValueError, match="not a number"):
        GuardSpec.parse("grader:json_valid")


def test_a_grader_guard_without_scores_stays_pending(store: Store) -> None:
    """Gradings that timed out or had no parsable score store nothing: never a verdict."""
    guards = (GuardSpec.parse(f"{SOURCE}:0"),)
    store.create_rollout(rollout(guards=guards, promote_when="no_regression", steps=(50, 100)), actor="test")
    log(store, "r", 30, CTRL)
    log(store, "r", 30, CAND, at=0.05)
    d = evaluate(store)
    assert d is not None and d.outcome == "hold" and SOURCE in d.reason
    report = store.audit_log("r")[-1].numbers["report"]
    assert [g["verdict"] for g in report["guards"]] == ["pending"]
