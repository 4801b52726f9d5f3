"""Cross-check client-side TTFT against the gateway's Prometheus histogram.

The gateway observes `loraplane_time_to_first_token_seconds` (labels include `model`, `variant`)
for every request. We snapshot /metrics before and after the run, subtract (the histogram is
cumulative over the gateway's life and may hold other traffic), estimate quantiles from the
bucket counts the way PromQL's `histogram_quantile` does (linear inside the bucket), and compare
with the exact percentiles of the raw client samples. They agree when they differ by at most the
width of the bucket the histogram estimate falls in: the histogram cannot resolve finer than
that. Client TTFT also includes loopback and HTTP parsing time, normally far below one bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loraplane.quantiles import histogram_quantile

TTFT_HISTOGRAM = "loraplane_time_to_first_token_seconds"
CHECK_QUANTILES = (50.0, 95.0, 99.0)

SeriesKey = frozenset[tuple[str, str]]  # the labels of one series, without `le`


@dataclass
class Histogram:
    buckets: dict[float, float]  # upper bound (le, +inf included) -> cumulative count
    count: float = 0.0

    def minus(self, other: Histogram | None) -> Histogram:
        if other is None:
            return Histogram(dict(self.buckets), self.count)
        return Histogram(
            {le: c - other.buckets.get(le, 0.0) for le, c in self.buckets.items()}, self.count - other.count
        )

    def plus(self, other: Histogram) -> Histogram:
        bounds = set(self.buckets) | set(other.buckets)
        merged = {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in bounds}
        return Histogram(merged, self.count + other.count)

    def quantile(self, q: float) -> tuple[float, float, float] | None:
        """(estimate, bucket lower bound, bucket upper bound) for q in [0, 100], like histogram_quantile."""
        return histogram_quantile(self.buckets, q)


def parse_histograms(text: str, name: str = TTFT_HISTOGRAM) -> dict[SeriesKey, Histogram]:
    series: dict[SeriesKey, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            hist = series.setdefault(frozenset(labels.items()), Histogram({}))
            if sample.name.endswith("_bucket"):
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                hist.count = sample.value
    return series


def run_delta(before: str | None, after: str) -> dict[SeriesKey, Histogram]:
    """Per-series histograms of what happened between the two snapshots."""
    old = parse_histograms(before) if before else {}
    return {key: hist.minus(old.get(key)) for key, hist in parse_histograms(after).items()}


def _sum(hists: list[Histogram]) -> Histogram | None:
    if not hists:
        return None
    total = hists[0]
    for hist in hists[1:]:
        total = total.plus(hist)
    return total


def _compare(hist: Histogram | None, client_ttft: np.ndarray) -> dict[str, Any]:
    rows: dict[str, Any] = {"histogram_count": hist.count if hist else 0, "client_count": int(client_ttft.size)}
    for q in CHECK_QUANTILES:
        estimate = hist.quantile(q) if hist else None
        client = float(np.percentile(client_ttft, q)) if client_ttft.size else None
        row: dict[str, Any] = {"client_s": client, "histogram_s": None, "bucket_s": None, "agree": None}
        if estimate is not None:
            value, lower, upper = estimate
            row.update(histogram_s=value, bucket_s=[lower, upper])
            if client is not None and not math.isinf(upper):
                row["agree"] = abs(client - value) <= upper - lower
        rows[f"p{q:g}"] = row
    return rows


def cross_check(
    before: str | None, after: str, models: list[str], client_ttft: dict[str, np.ndarray]
) -> dict[str, Any] | None:
    """Compare the histogram with client TTFT, overall and per group. None if the target has no such metric.

    A series counts for the run when its `model` label is a model we sent (or its name without
    the version); it counts for a group when one of its label values equals the group's label
    (e.g. variant="support-bot@v2", or model="smollm2-135m-instruct" for the base).
    """
    delta = run_delta(before, after)
    names = set(models) | {m.partition("@")[0] for m in models}  # the gateway labels `name@v2` as `name`
    ours = [(dict(key), hist) for key, hist in delta.items() if dict(key).get("model", models[0]) in names]
    if not ours:
        return None
    result: dict[str, Any] = {
        "metric": TTFT_HISTOGRAM,
        "overall": _compare(_sum([h for _, h in ours]), np.concatenate(list(client_ttft.values()) or [np.array([])])),
        "groups": {},
    }
    for group, values in client_ttft.items():
        label = group.split(" (")[0]  # drop a "(long)"/"(short)" prompt-kind suffix
        matching = [h for labels, h in ours if label in labels.values()]
        if matching:
            result["groups"][group] = _compare(_sum(matching), values)
    return result
