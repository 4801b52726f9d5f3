"""The one percentile and the one histogram-quantile estimator of the project.

`percentile` is exact over raw samples (linear interpolation between closest ranks, numpy's
default); `histogram_quantile` estimates from cumulative Prometheus buckets the way PromQL's
`histogram_quantile` does (linear inside the bucket; the highest finite bound for +Inf).
Used by the load test, the demo report and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (q in [0, 100]) of `values`; None when there are none."""
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    return float(np.percentile(array, q)) if array.size else None


def histogram_quantile(buckets: Mapping[float, float], q: float) -> tuple[float, float, float] | None:
    """(estimate, bucket lower bound, bucket upper bound) for q in [0, 100]; None for no observations.

    `buckets` maps each upper bound (`le`, +Inf included) to its cumulative count.
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q / 100 * total, 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):  # PromQL answers the highest finite bound here
                return lower, lower, upper
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share, lower, upper
        lower, below = upper, count
    return None
