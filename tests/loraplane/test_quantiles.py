"""loraplane/quantiles.py: the project's one percentile and one histogram-quantile estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loraplane.quantiles import histogram_quantile, percentile


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0 and percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile([10.0, 20.0], 25) == 12.5
    assert percentile([], 50) is None and percentile(np.array([]), 95) is None


@pytest.mark.parametrize("q", [1, 50, 90, 99, 99.9])
def test_percentile_is_numpys_default_on_arrays_and_lists(q: float) -> None:
    values = np.random.default_rng(2).exponential(1.0, 501)
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile(values.tolist(), q) == pytest.approx(np.percentile(values, q))


def test_histogram_quantile_matches_promql_arithmetic() -> None:
    # 10 observations <= 0.1, 30 <= 0.5, 40 total: rank of q=50 is 20, 10 into the (0.1, 0.5] bucket of 20.
    buckets = {0.1: 10.0, 0.5: 30.0, math.inf: 40.0}
    assert histogram_quantile(buckets, 50) == pytest.approx((0.1 + 0.4 * 10 / 20, 0.1, 0.5))
    assert histogram_quantile(buckets, 25)[0] == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert histogram_quantile(buckets, 12.5)[0] == pytest.approx(0.05)  # linear from 0 in the first bucket
    assert histogram_quantile(buckets, 99) == (0.5, 0.5, math.inf)  # +Inf bucket: highest finite bound


def test_histogram_quantile_without_observations_is_none() -> None:
    assert histogram_quantile({}, 50) is None
    assert histogram_quantile({0.1: 0.0, math.inf: 0.0}, 50) is None


def test_estimate_agrees_with_exact_percentile_within_a_bucket() -> None:
    values = np.random.default_rng(3).uniform(0, 1, 4000)
    bounds = [i / 10 for i in range(1, 11)] + [math.inf]
    buckets = {b: float(np.sum(values <= b)) for b in bounds}
    for q in (10, 50, 90):
        estimate, lower, upper = histogram_quantile(buckets, q)
        assert lower <= estimate <= upper
        assert abs(estimate - percentile(values, q)) < 0.02  # uniform data: linear-in-bucket is near exact
