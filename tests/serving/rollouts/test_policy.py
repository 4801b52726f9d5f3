"""The rollout state machine and decision policy: min-samples and min-users gates, rollback on a
failed guard or on a candidate that shows nothing, the promotion rules."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rollouts.policy import (
    MIN_UNITS,
    GuardSpec,
    RolloutSpec,
    State,
    decide,
    evaluate_guard,
    manual_transition,
    state_after,
)
from serving.rollouts.stats import Cells

GUARDS = (GuardSpec("error_rate", 0.0), GuardSpec("ttft_p95", 0.0), GuardSpec("feedback", 0.0))


def spec(**changes: object) -> RolloutSpec:
    values: dict = {
        "steps": (10, 50, 100),
        "min_samples": 100,
        "interval_s": 30.0,
        "alpha": 0.05,
        "guards": GUARDS,
        "promote_when": "better",
    }
    values.update(changes)
    return RolloutSpec(**values)


def cells(p: tuple[float, float], users: int, seed: int, per_user: int = 4) -> Cells:
    """(control, candidate) rates; `users` per variant, each with per_user observations, one step."""
    rng = np.random.default_rng(seed)
    count = np.zeros((2 * users, 2))
    total = np.zeros_like(count)
    count[:users, 0], count[users:, 1] = per_user, per_user
    total[:users, 0] = rng.binomial(per_user, p[1], users)
    total[users:, 1] = rng.binomial(per_user, p[0], users)
    return Cells(total, count, np.array([0, 0]), np.array([True, False]))


def verdicts(
    s: RolloutSpec,
    feedback: tuple[float, float] = (0.5, 0.5),
    errors: tuple[float, float] = (0.02, 0.02),
    users: int = 500,
):
    data = {"error_rate": errors, "ttft_p95": (0.05, 0.05), "feedback": feedback}
    return [evaluate_guard(s, g, cells(data[g.metric], users, i)) for i, g in enumerate(s.guards)]


def test_spec_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"end at 100"):
        spec(steps=(10, 50))
    with pytest.raises(ValueError, match=r"increase strictly"):
        spec(steps=(50, 10, 100))
    with pytest.raises(ValueError, match="at least one step below 100"):
        spec(steps=(100,))
    with pytest.raises(ValueError, match="reads guard .feedback., which is not among the guards"):
        spec(guards=(GuardSpec("error_rate", 0.0),))
    with pytest.raises(ValueError, match="repeat"):
        spec(guards=(GuardSpec("feedback", 0.0), GuardSpec("feedback", 0.1)))
    with pytest.raises(ValueError, match="min_samples"):
        spec(min_samples=0)
    with pytest.raises(ValueError, match="'latency' is not one of"):
        GuardSpec.parse("latency:0.1")
    with pytest.raises(ValueError, match="METRIC:MARGIN"):
        GuardSpec.parse("error_rate")
    assert GuardSpec.parse("error_rate:0.01") == GuardSpec("error_rate", 0.01)
    s = spec()
    assert RolloutSpec.from_json(s.to_json()) == s
    assert s.weights(0) == (10, 90) and s.guard_alpha == pytest.approx(0.05 / 3)


def test_holds_until_min_samples_then_advances_step_by_step() -> None:
    s = spec()
    ok = verdicts(s)
    held = decide(s, 0, (99, 900), ok)
    assert (held.outcome, held.step_index) == ("hold", 0) and "99" in held.reason
    advanced = decide(s, 0, (100, 900), ok)
    assert (advanced.outcome, advanced.step_index) == ("advance", 1)
    assert state_after(advanced) is State.RUNNING


def test_rolls_back_on_a_guard_breach_with_the_numbers_in_the_reason() -> None:
    s = spec()
    bad = verdicts(s, errors=(0.02, 0.15))
    assert [v.verdict for v in bad][0] == "fail"
    d = decide(s, 0, (10, 90), bad)  # even before min samples at this step (the guard has its own)
    assert d.outcome == "rollback" and "error_rate" in d.reason and "margin 0.0" in d.reason
    assert state_after(d) is State.ROLLED_BACK


def test_a_margin_tolerates_a_small_regression() -> None:
    s = spec(guards=(GuardSpec("error_rate", 0.2), GuardSpec("feedback", 0.0)))
    tolerated = verdicts(s, errors=(0.02, 0.08))
    assert tolerated[0].verdict == "not_worse"
    assert decide(s, 0, (500, 500), tolerated).outcome == "advance"


def test_promotion_rules_at_the_last_compared_step() -> None:
    better = spec()
    assert decide(better, 1, (500, 500), verdicts(better, feedback=(0.5, 0.7))).outcome == "promote"
    same = decide(better, 1, (500, 500), verdicts(better))
    assert same.outcome == "hold" and "not yet shown better" in same.reason
    flagger = spec(promote_when="no_regression")
    promoted = decide(flagger, 1, (500, 500), verdicts(flagger))
    assert (promoted.outcome, promoted.step_index) == ("promote", 2)
    assert state_after(promoted) is State.PROMOTED
    worse_fb = verdicts(better, feedback=(0.7, 0.5))
    assert decide(better, 1, (500, 500), worse_fb).outcome == "rollback"


def test_guard_verdicts_are_pending_below_min_samples_or_min_users() -> None:
    s = spec(min_samples=5000)
    assert {v.verdict for v in verdicts(s)} == {"pending"}
    small = spec(min_samples=50)
    few_users = verdicts(small, errors=(0.0, 1.0), users=MIN_UNITS - 1)  # 76 requests, all failing
    assert {v.verdict for v in few_users} == {"pending"}
    assert verdicts(small, errors=(0.0, 1.0), users=MIN_UNITS)[0].verdict == "fail"


def test_no_regression_never_promotes_while_a_guard_has_no_verdict() -> None:
    """The demo's old decision: promoted after 12 candidate requests with every guard pending."""
    flagger = spec(promote_when="no_regression", min_samples=5000)
    held = decide(flagger, 1, (6000, 6000), verdicts(flagger))
    assert held.outcome == "hold" and "no verdict yet" in held.reason


def test_a_candidate_with_no_observations_while_control_has_min_samples_is_rolled_back() -> None:
    s = spec()
    pending = verdicts(spec(min_samples=10**6))
    d = decide(s, 1, (0, 100), pending, control_units=40)  # 50%: 0.5^40 of happening by chance
    assert d.outcome == "rollback" and "candidate has no observations at step 50%" in d.reason
    assert "100 requests from 40 users" in d.reason and state_after(d) is State.ROLLED_BACK
    assert decide(s, 1, (0, 100), pending).outcome == "rollback"  # users unknown: the counts alone
    # At 10% a handful of users all landing on control is ordinary: hold, not roll back.
    assert decide(s, 0, (0, 100), pending, control_units=20).outcome == "hold"
    assert decide(s, 0, (0, 100), pending, control_units=70).outcome == "rollback"  # 0.9^70 < 0.001
    assert decide(s, 1, (0, 99), pending, control_units=40).outcome == "hold"  # control short of min_samples
    assert decide(s, 1, (1, 100), pending, control_units=40).outcome == "hold"


def test_the_per_request_method_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="sticky per user"):
        spec(method="eb")


def test_manual_transitions() -> None:
    assert manual_transition(State.RUNNING, "pause") is State.PAUSED
    assert manual_transition(State.PAUSED, "resume") is State.RUNNING
    assert manual_transition(State.PAUSED, "promote") is State.PROMOTED
    assert manual_transition(State.RUNNING, "rollback") is State.ROLLED_BACK
    with pytest.raises(ValueError, match="cannot resume a rollout that is running"):
        manual_transition(State.RUNNING, "resume")
    with pytest.raises(ValueError, match="cannot pause a rollout that is promoted"):
        manual_transition(State.PROMOTED, "pause")
    with pytest.raises(ValueError, match="unknown action"):
        manual_transition(State.RUNNING, "delete")
    assert State.ROLLED_BACK.terminal and not State.PAUSED.terminal
