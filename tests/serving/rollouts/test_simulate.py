"""Simulated rollouts of the gateway's traffic (sticky users, heavy-tailed request counts,
heterogeneous rates, steps 10 -> 50%, shared drift, partial feedback), each evaluated after every
look by the real decision path: A/A false decisions stay under alpha where the per-request analysis
it replaced does not, real effects are found at the default sizes, and the simulation's running
aggregates equal the statistics of the dense per-unit cells.

Default sizes (serving/config.py RolloutsConfig): steps 10,50,100, min_samples 200, alpha 0.05,
guards error_rate/ttft_p95/feedback with margin 0, promote_when better. The CI sizes here are 300
rollouts per A/A scenario; `python -m serving.rollouts.simulate` runs 1,000 (docs/rollouts.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from serving.config import RolloutsConfig
from serving.gateway.experiments import assign_variant
from serving.rollouts.simulate import (
    AA_SCENARIOS,
    DRIFT,
    HEAVY,
    MILD,
    _Aggregates,
    _traffic,
    _Users,
    simulate,
)
from serving.rollouts.stats import Cells, Moments, stratified_difference

DEFAULTS = RolloutsConfig().spec()
ROLLOUTS = 300


@pytest.mark.parametrize("scenario", AA_SCENARIOS, ids=["independent", "300-heavy-tailed", "2000-beta55", "step-drift"])
def test_aa_rollouts_of_gateway_traffic_falsely_decide_at_most_alpha(scenario) -> None:
    result = simulate(DEFAULTS, scenario, rollouts=ROLLOUTS, seed=11)
    assert result.rates["rollback"] <= DEFAULTS.alpha, result
    assert result.rates["promote"] <= DEFAULTS.alpha, result
    assert result.rollouts == ROLLOUTS


@pytest.mark.parametrize("scenario", [HEAVY, DRIFT], ids=["heavy-tailed", "step-with-drift"])
def test_the_per_request_analysis_it_replaced_falsely_decides_more_than_alpha(scenario) -> None:
    """The counterexample (what main did: every request its own unit, steps pooled)."""
    result = simulate(DEFAULTS, scenario, rollouts=200, seed=12, per_request=True)
    assert result.rates["rollback"] + result.rates["promote"] > 2 * DEFAULTS.alpha, result


@pytest.mark.parametrize(
    ("effect", "outcome", "guard"),
    [
        ({"feedback_mean": (0.5, 0.6)}, "promote", None),
        ({"feedback_mean": (0.5, 0.4)}, "rollback", "feedback"),
        ({"error_rate": (0.02, 0.07)}, "rollback", "error_rate"),
    ],
    ids=["feedback+0.10", "feedback-0.10", "errors+5pts"],
)
def test_power_for_stated_effects_at_the_default_sample_sizes(effect: dict, outcome: str, guard: str | None) -> None:
    result = simulate(DEFAULTS, replace(MILD, **effect), rollouts=200, seed=13)
    assert result.rates[outcome] >= 0.8, result  # measured at 1,000 rollouts: docs/rollouts.md
    wrong = "rollback" if outcome == "promote" else "promote"
    assert result.rates[wrong] <= DEFAULTS.alpha, result
    if guard is not None:
        assert max(result.rollback_reasons, key=result.rollback_reasons.__getitem__) == guard


def test_running_aggregates_equal_the_statistics_of_the_dense_cells() -> None:
    rng = np.random.default_rng(5)
    users = _Users.draw(HEAVY, 8, DEFAULTS.min_samples, rng)
    agg = _Aggregates(8, HEAVY.users, DEFAULTS)
    step = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for look in range(6):
        if look == 3:
            step[:4] = 1  # half the rollouts advance mid-way: their users keep their step-0 cells
        share = np.array([0.1, 0.5])[step]
        req = _traffic(HEAVY, users, np.arange(8), share, look, rng)
        column = 2 * step[req["rollout"]] + (~req["candidate"]).astype(np.int64)
        agg.add(req["rollout"], req["user"], column, req["count"], req["total"])
    for guard in range(3):
        dense = Cells(agg.total[:, :, guard], agg.count[:, :, guard], agg.strata, agg.candidate)
        expected = Moments.of(dense)
        running = agg.moments(np.arange(8), guard)
        for name in ("a", "b", "aa", "ab", "bb", "units"):
            np.testing.assert_allclose(getattr(running, name), getattr(expected, name), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            stratified_difference(running, 0.05)[2], stratified_difference(expected, 0.05)[2], rtol=1e-9
        )
        arm_units = [(dense.count[..., mask] > 0).any(-1).sum(-1) for mask in (agg.candidate, ~agg.candidate)]
        assert agg.arm_units[:, guard].T.tolist() == [a.tolist() for a in arm_units]
        assert agg.col_units[:, guard].tolist() == (dense.count > 0).sum(axis=1).tolist()
        np.testing.assert_allclose(agg.n[:, guard], dense.count.sum(axis=1))


def test_the_simulated_sticky_buckets_are_what_assign_variant_does() -> None:
    """assign_variant's buckets are nested (a user on the candidate at 10% stays on it at 50%) and
    uniform: the simulation's per-user bucket < share is the same assignment."""
    keys = [f"user-{i}" for i in range(4000)]
    at = {
        share: {k for k in keys if assign_variant("r", k, {"bot@v2": share, "bot@v1": 100 - share}) == "bot@v2"}
        for share in (10, 50)
    }
    assert at[10] <= at[50]
    assert abs(len(at[10]) / 4000 - 0.1) < 0.02 and abs(len(at[50]) / 4000 - 0.5) < 0.03
