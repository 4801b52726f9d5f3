import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtest.promcheck import TTFT_HISTOGRAM, cross_check, parse_histograms, run_delta

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


def exposition(observations: dict[tuple[str, str], list[float]]) -> str:
    """Real prometheus_client text for a TTFT histogram with `model` and `variant` labels."""
    registry = CollectorRegistry()
    hist = Histogram(TTFT_HISTOGRAM, "ttft", ["model", "variant"], buckets=BUCKETS, registry=registry)
    for (model, variant), values in observations.items():
        for value in values:
            hist.labels(model, variant).observe(value)
    return generate_latest(registry).decode()


def test_quantile_estimate_lies_in_the_bucket_of_the_true_percentile():
    values = np.random.default_rng(0).lognormal(np.log(0.3), 0.4, 2000)
    (hist,) = parse_histograms(exposition({("exp", "a@v1"): values.tolist()})).values()
    assert hist.count == 2000
    for q in (50, 95, 99):
        estimate, lower, upper = hist.quantile(q)
        true = np.percentile(values, q)
        assert lower <= estimate <= upper
        assert abs(true - estimate) <= upper - lower


def test_delta_removes_what_was_there_before_the_run():
    before = exposition({("exp", "a@v1"): [5.0] * 100})
    after = exposition({("exp", "a@v1"): [5.0] * 100 + [0.04] * 10})
    (hist,) = run_delta(before, after).values()
    assert hist.count == 10
    assert 0.025 <= hist.quantile(50)[0] <= 0.05  # the old 5 s observations are gone


def test_cross_check_agrees_for_matching_samples_and_flags_a_shift():
    rng = np.random.default_rng(1)
    v1, v2 = rng.uniform(0.2, 0.28, 200), rng.uniform(0.6, 0.7, 200)
    after = exposition({("exp", "a@v1"): v1.tolist(), ("exp", "a@v2"): v2.tolist(), ("other", "none"): [9.0] * 50})
    result = cross_check(None, after, ["exp"], {"a@v1": v1, "a@v2": v2})
    assert result["overall"]["histogram_count"] == 400  # the `other` model's series is not ours
    for group in ("a@v1", "a@v2"):
        assert all(result["groups"][group][q]["agree"] for q in ("p50", "p95", "p99"))
    shifted = cross_check(None, after, ["exp"], {"a@v1": v1 + 0.3, "a@v2": v2})
    assert shifted["groups"]["a@v1"]["p50"]["agree"] is False


def test_no_metric_means_no_cross_check():
    assert cross_check(None, "# nothing here\n", ["exp"], {"a": np.array([0.1])}) is None
