"""The unit-level statistics: the stratified estimate and its cluster-robust variance against a
direct computation and the bootstrap, what stratifying and capping protect against, the mixture
boundary against its defining integral, and why a fixed-n test read after every batch is not enough."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rollouts.stats import (
    UNIT_WEIGHT_CAP,
    Cells,
    Moments,
    compare,
    mixture_radius,
    msprt_diff,
    stratified_difference,
)

ALPHA = 0.05
STRATA, CANDIDATE = np.array([0, 0, 1, 1]), np.array([True, False, True, False])


def two_step_cells(rng: np.random.Generator, units: int, shares=(0.1, 0.5), rates=(0.3, 0.3)) -> Cells:
    """Sticky users over steps 10% -> 50% (nested buckets): heavy-tailed counts, Beta(1,1) rates."""
    bucket, p = rng.random(units), rng.beta(1, 1, units)
    count, total = np.zeros((units, 4)), np.zeros((units, 4))
    for s, share in enumerate(shares):
        n = rng.poisson(rng.lognormal(0.0, 1.5, units) * 2)
        y = rng.binomial(n, np.clip(p * rates[s] / 0.5, 0, 1))
        on = bucket < share
        count[on, 2 * s], total[on, 2 * s] = n[on], y[on]
        count[~on, 2 * s + 1], total[~on, 2 * s + 1] = n[~on], y[~on]
    return Cells(total, count, STRATA, CANDIDATE)


def brute_force(cells: Cells, cap: float = UNIT_WEIGHT_CAP) -> tuple[float, float]:
    """The estimate and CR1 variance written out unit by unit (no moments, no vectorised sums)."""
    units, cols = cells.count.shape
    w = np.minimum(cells.count, cap)
    m = np.divide(cells.total, cells.count, out=np.zeros_like(cells.total), where=cells.count > 0)
    weight = [sum(w[i, j] for i in range(units)) for j in range(cols)]
    theta = [sum(w[i, j] * m[i, j] for i in range(units)) / weight[j] for j in range(cols)]
    h = [1 / (1 / weight[2 * s] + 1 / weight[2 * s + 1]) for s in (0, 1)]
    omega = [x / sum(h) for x in h]
    diff = sum(omega[s] * (theta[2 * s] - theta[2 * s + 1]) for s in (0, 1))
    influence = []
    for i in range(units):
        term = 0.0
        for j in range(cols):
            sign = 1.0 if cells.candidate[j] else -1.0
            term += sign * omega[cells.strata[j]] * w[i, j] * (m[i, j] - theta[j]) / weight[j]
        influence.append(term)
    k = int((w > 0).any(axis=1).sum())
    pseudo = sum(omega[cells.strata[j]] ** 2 * 0.25 / max(weight[j], 1.0) ** 2 for j in range(cols))
    return diff, k / (k - 1) * float(np.sum(np.square(influence))) + pseudo


def test_moments_give_the_estimate_and_cluster_robust_variance_of_a_direct_computation() -> None:
    cells = two_step_cells(np.random.default_rng(1), 400)
    diff, lo, hi, variance, used = stratified_difference(Moments.of(cells), ALPHA)
    expected_diff, expected_variance = brute_force(cells)
    assert float(diff) == pytest.approx(expected_diff, rel=1e-9, abs=1e-12)
    assert float(variance) == pytest.approx(expected_variance, rel=1e-9)
    assert int(used) == 2
    assert float(hi - lo) == pytest.approx(2 * float(mixture_radius(expected_variance, ALPHA)))


def test_cluster_robust_variance_agrees_with_the_unit_bootstrap_at_large_n() -> None:
    rng = np.random.default_rng(2)
    cells = two_step_cells(rng, 3000)
    _, _, _, variance, _ = stratified_difference(Moments.of(cells), ALPHA)
    draws = []
    for _ in range(300):  # resample whole units (clusters), as the assignment does
        pick = rng.integers(0, 3000, 3000)
        boot = Cells(cells.total[pick], cells.count[pick], STRATA, CANDIDATE)
        draws.append(float(stratified_difference(Moments.of(boot), ALPHA)[0]))
    assert float(variance) == pytest.approx(np.var(draws), rel=0.2)


def test_a_per_request_variance_would_be_far_too_small_for_sticky_heterogeneous_users() -> None:
    cells = two_step_cells(np.random.default_rng(3), 3000)
    _, _, _, variance, _ = stratified_difference(Moments.of(cells), ALPHA)
    n_c, n_s = cells.count[:, CANDIDATE].sum(), cells.count[:, ~CANDIDATE].sum()
    p = cells.total.sum() / cells.count.sum()
    per_request = p * (1 - p) * (1 / n_c + 1 / n_s)
    assert float(variance) > 2 * per_request


def test_stratifying_by_step_removes_the_bias_of_an_allocation_change_under_shared_drift() -> None:
    """Both versions err 1% at step 10% and 4% at step 50%: pooled, the candidate (mostly seen
    late) looks worse; within each step it is not."""
    units = 4000
    count = np.zeros((units, 4))
    total = np.zeros((units, 4))
    bucket = np.arange(units) / units
    for s, (share, rate) in enumerate(((0.1, 0.01), (0.5, 0.04))):
        on = bucket < share
        count[on, 2 * s], total[on, 2 * s] = 10, 10 * rate
        count[~on, 2 * s + 1], total[~on, 2 * s + 1] = 10, 10 * rate
    cells = Cells(total, count, STRATA, CANDIDATE)
    diff, lo, hi, _, _ = stratified_difference(Moments.of(cells), ALPHA)
    assert abs(float(diff)) < 1e-12 and lo < 0 < hi
    pooled_c = total[:, CANDIDATE].sum() / count[:, CANDIDATE].sum()
    pooled_s = total[:, ~CANDIDATE].sum() / count[:, ~CANDIDATE].sum()
    assert pooled_c - pooled_s > 0.01  # what a per-request, unstratified analysis would compare


def test_one_key_rating_a_thousand_times_weighs_as_much_as_the_cap() -> None:
    count, total = np.zeros((60, 2)), np.zeros((60, 2))
    count[1:30, 0], total[1:30, 0] = 1, 1  # candidate: 29 users rate one answer 1.0
    count[0, 0] = 1000  # ... and one key rates a thousand answers 0.0
    count[30:, 1], total[30:, 1] = 1, 1  # control: 30 users rate one answer 1.0
    cmp = compare(Cells(total, count, np.array([0, 0]), np.array([True, False])), ALPHA)
    assert cmp.candidate.mean == pytest.approx(29 / (29 + UNIT_WEIGHT_CAP))  # not 29 / 1029
    assert cmp.candidate.units == 30 and cmp.candidate.n == 1029


def test_empty_and_one_sided_steps_claim_nothing() -> None:
    empty = compare(Cells(np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0, int), np.zeros(0, bool)), ALPHA)
    assert (empty.diff_lo, empty.diff_hi, empty.strata) == (-1.0, 1.0, 0)
    assert empty.candidate.n == 0 and (empty.candidate.lo, empty.candidate.hi) == (0.0, 1.0)
    only_control = Cells(np.ones((3, 1)), np.ones((3, 1)), np.array([0]), np.array([False]))
    assert compare(only_control, ALPHA).strata == 0
    with pytest.raises(ValueError, match="alpha"):
        mixture_radius(0.1, 0.0)


def test_no_errors_yet_never_claims_zero_variance() -> None:
    count = np.full((50, 2), 20.0)
    count[:25, 1] = 0
    count[25:, 0] = 0
    cells = Cells(np.zeros((50, 2)), count, np.array([0, 0]), np.array([True, False]))
    _, lo, hi, variance, _ = stratified_difference(Moments.of(cells), ALPHA)
    assert float(variance) > 0 and lo < 0 < hi


def test_msprt_interval_is_where_the_mixture_likelihood_ratio_reaches_one_over_alpha() -> None:
    """Johari et al.'s closed form, checked against the mixture integral it comes from:
    Lambda = int N(d; theta, V) / N(d; 0, V) dN(theta; 0, tau^2), at d = the radius, is 1/alpha."""
    var_c, var_s, n_c, n_s, tau = 0.24, 0.2, 300, 900, 0.05
    lo, hi = msprt_diff(0.0, var_c, n_c, 0.0, var_s, n_s, ALPHA, tau)
    v = var_c / n_c + var_s / n_s
    theta = np.linspace(-1, 1, 400_001)
    prior = np.exp(-(theta**2) / (2 * tau**2)) / np.sqrt(2 * np.pi * tau**2)
    for d in (float(hi), float(-lo)):
        ratio = np.exp((theta * d - theta**2 / 2) / v)
        mixture = np.sum(ratio * prior) * (theta[1] - theta[0])
        assert mixture == pytest.approx(1 / ALPHA, rel=1e-3)


def test_a_fixed_n_z_test_read_after_every_batch_rejects_far_more_often_than_alpha() -> None:
    """The reason for a confidence sequence: peeking at a 95% z-interval 40 times in an A/A test."""
    rng = np.random.default_rng(4)
    a = (rng.random((1000, 4000)) < 0.5) * 1.0
    b = (rng.random((1000, 4000)) < 0.5) * 1.0
    looks = np.arange(100, 4001, 100)
    diff = np.cumsum(a - b, axis=1)[:, looks - 1] / looks
    z = np.abs(diff) / np.sqrt(0.5 / looks)
    naive = (z > 1.96).any(axis=1).mean()
    mean_a, mean_b = (np.cumsum(x, axis=1)[:, looks - 1] / looks for x in (a, b))
    lo, hi = msprt_diff(mean_a, 0.25, looks, mean_b, 0.25, looks, ALPHA)
    always_valid = ((lo > 0) | (hi < 0)).any(axis=1).mean()
    assert naive > 3 * ALPHA
    assert always_valid <= ALPHA
