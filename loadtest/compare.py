"""Per-variant comparison: "is v2 slower than v1?", with a significance test.

The first group in natural order (e.g. support-bot@v1) is the baseline; every other group is
compared with it. Latencies use the two-sided Mann-Whitney U test (no normality assumption;
latency distributions are skewed). ITL is compared per request (each request's mean gap), since
gaps inside one request are not independent. Error rates use Fisher's exact test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import fisher_exact, mannwhitneyu

from loadtest.samples import RunStats

MIN_SAMPLES = 3  # below this per side, no test is run


def _latency(base: np.ndarray, other: np.ndarray, alpha: float) -> dict[str, Any]:
    row: dict[str, Any] = {"n": [int(base.size), int(other.size)], "p_value": None, "significant": None}
    if base.size and other.size:
        base_median, other_median = float(np.median(base)), float(np.median(other))
        row.update(median_s=[base_median, other_median])
        row["change"] = (other_median - base_median) / base_median if base_median > 0 else None
    if min(base.size, other.size) < MIN_SAMPLES:
        row["verdict"] = f"too few samples to test (need {MIN_SAMPLES} per side)"
        return row
    test = mannwhitneyu(other, base, alternative="two-sided")
    p_value = float(test.pvalue)
    # Probability that a random request of `other` is slower than one of `base` (0.5 = no shift).
    row.update(
        p_value=p_value, significant=p_value < alpha, prob_slower=float(test.statistic) / (base.size * other.size)
    )
    direction = "slower" if row["median_s"][1] > row["median_s"][0] else "faster"
    row["verdict"] = (
        f"{direction} (significant, p={p_value:.3g} < {alpha:g})"
        if p_value < alpha
        else f"no significant difference (p={p_value:.3g} >= {alpha:g})"
    )
    return row


def _errors(base: RunStats, other: RunStats, alpha: float) -> dict[str, Any]:
    row: dict[str, Any] = {"error_rate": [base.error_rate, other.error_rate], "p_value": None, "significant": None}
    if base.requests and other.requests:
        table = [[base.failures, base.requests - base.failures], [other.failures, other.requests - other.failures]]
        p_value = float(fisher_exact(table).pvalue)
        row.update(p_value=p_value, significant=p_value < alpha)
    return row


def compare_groups(groups: dict[str, RunStats], alpha: float) -> list[dict[str, Any]]:
    """One comparison per non-baseline group against the baseline (the first group)."""
    labels = list(groups)
    if len(labels) < 2:
        return []
    base_label, base = labels[0], groups[labels[0]]
    comparisons = []
    for label in labels[1:]:
        other = groups[label]
        metrics = {
            "ttft": _latency(base.values["ttft"], other.values["ttft"], alpha),
            "itl": _latency(base.itl_per_request, other.itl_per_request, alpha),
            "e2e": _latency(base.values["e2e"], other.values["e2e"], alpha),
        }
        comparison = {"baseline": base_label, "variant": label, "alpha": alpha, **metrics}
        comparison["errors"] = _errors(base, other, alpha)
        comparison["statement"] = statement(base_label, label, metrics)
        comparisons.append(comparison)
    return comparisons


def statement(base_label: str, label: str, metrics: dict[str, dict[str, Any]]) -> str:
    """One sentence answering "is <label> slower than <base_label>?"."""
    parts = []
    for metric, row in metrics.items():
        medians = row.get("median_s")
        if not medians:
            parts.append(f"{metric.upper()}: no samples")
            continue
        change = row.get("change")
        change_text = f" ({change:+.0%})" if isinstance(change, float) else ""
        parts.append(f"{metric.upper()} median {medians[1]:.3g}s vs {medians[0]:.3g}s{change_text}: {row['verdict']}")
    return f"{label} vs {base_label}: " + "; ".join(parts)
