"""The always-valid intervals: coverage at every time at once, the mSPRT formula against its
defining mixture integral, and why a fixed-n test read after every batch is not enough."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rollouts.stats import (
    compare,
    exceedance,
    interval,
    msprt_diff,
    regularised_variance,
    running_cs,
    stitched_boundary,
)

ALPHA = 0.05


@pytest.mark.parametrize("p", [0.02, 0.3, 0.5])
def test_eb_confidence_sequence_covers_the_mean_at_every_time_at_once(p: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((1000, 2000)) < p) * 1.0
    _, lo, hi = running_cs(x, ALPHA)
    ever_missed = ((lo > p) | (hi < p)).any(axis=1).mean()
    assert ever_missed <= ALPHA
    assert (hi - lo)[:, -1].mean() < (hi - lo)[:, 99].mean() / 3  # it does shrink with n


def test_boundary_grows_with_variance_and_shrinks_with_alpha() -> None:
    v = np.array([1.0, 10.0, 100.0, 1000.0])
    u = stitched_boundary(v, 0.05)
    assert np.all(np.diff(u) > 0)
    assert np.all(u / v < np.concatenate([[np.inf], (u / v)[:-1]]))  # radius per unit variance falls
    assert np.all(stitched_boundary(v, 0.01) > u)
    with pytest.raises(ValueError, match="alpha"):
        stitched_boundary(v, 0.0)


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


def test_compare_finds_a_real_difference_and_names_each_variant() -> None:
    rng = np.random.default_rng(2)
    control = (rng.random(2000) < 0.02) * 1.0
    candidate = (rng.random(1000) < 0.15) * 1.0
    for method in ("msprt", "eb"):
        cmp = compare(candidate, control, ALPHA, method)
        assert cmp.diff_lo > 0, method  # candidate errs more, shown
        assert cmp.candidate.n == 1000 and cmp.control.n == 2000
        assert cmp.candidate.lo <= cmp.candidate.mean <= cmp.candidate.hi
    msprt, eb = compare(candidate, control, ALPHA, "msprt"), compare(candidate, control, ALPHA, "eb")
    assert msprt.diff_hi - msprt.diff_lo < eb.diff_hi - eb.diff_lo


def test_empty_and_bad_input() -> None:
    empty = interval([], ALPHA)
    assert empty.n == 0 and (empty.lo, empty.hi) == (0.0, 1.0)
    cmp = compare([], [1.0, 0.0], ALPHA)
    assert (cmp.diff_lo, cmp.diff_hi) == (-1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        running_cs([0.5, 1.5], ALPHA)
    with pytest.raises(ValueError, match="method"):
        compare([1.0], [0.0], ALPHA, "t-test")


def test_regularised_variance_never_claims_zero() -> None:
    assert float(regularised_variance(0.0, 0.0, 500)) == pytest.approx(0.25 / 501)
    x = np.random.default_rng(3).random(10_000)
    assert float(regularised_variance(x.sum(), (x * x).sum(), x.size)) == pytest.approx(x.var(), rel=0.01)


def test_exceedance_marks_latencies_above_the_threshold() -> None:
    assert exceedance([0.1, 0.3, 0.2], 0.2).tolist() == [0.0, 1.0, 0.0]


def test_a_fixed_n_z_test_read_after_every_batch_rejects_far_more_often_than_alpha() -> None:
    """The reason for all of the above: peeking at a 95% z-interval 40 times in an A/A test."""
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
