import numpy as np

from loadtest.compare import compare_groups
from loadtest.samples import RequestSample, RunStats, group_samples


def samples(label: str, ttfts, gap: float = 0.01, errors: int = 0) -> list[RequestSample]:
    out = [
        RequestSample(i, label, "exp", f"u{i}", "short", 0.0, 0.0, 200, variant=label, ttft_s=float(t),
                      gaps_s=[gap] * 4, e2e_s=float(t) + 4 * gap, output_tokens=5)
        for i, t in enumerate(ttfts)
    ]  # fmt: skip
    for s in out[:errors]:
        s.error = "HTTP 500: injected"
    return out


def stats_of(*groups: list[RequestSample]) -> dict[str, RunStats]:
    return {label: RunStats(g, wall_s=10) for label, g in group_samples([s for g in groups for s in g]).items()}


def test_groups_in_natural_version_order():
    rng = np.random.default_rng(0)
    groups = stats_of(
        samples("bot@v10", rng.random(5)), samples("bot@v2", rng.random(5)), samples("bot@v1", rng.random(5))
    )
    assert list(groups) == ["bot@v1", "bot@v2", "bot@v10"]
    assert [c["variant"] for c in compare_groups(groups, 0.05)] == ["bot@v2", "bot@v10"]


def test_a_slower_v2_is_reported_significant():
    rng = np.random.default_rng(1)
    v1 = samples("bot@v1", rng.normal(0.30, 0.03, 60))
    v2 = samples("bot@v2", rng.normal(0.40, 0.03, 60))
    (comparison,) = compare_groups(stats_of(v1, v2), alpha=0.05)
    ttft = comparison["ttft"]
    assert comparison["baseline"] == "bot@v1" and comparison["variant"] == "bot@v2"
    assert ttft["significant"] is True and ttft["p_value"] < 1e-6
    assert ttft["prob_slower"] > 0.9 and ttft["change"] > 0.2
    assert "TTFT" in comparison["statement"] and "slower (significant" in comparison["statement"]
    assert comparison["itl"]["significant"] is False  # identical gaps: no difference
    assert comparison["itl"]["n"] == [60, 60]  # ITL is tested per request, not per gap


def test_same_distribution_is_not_significant():
    rng = np.random.default_rng(2)
    draws = rng.normal(0.3, 0.03, 120)
    (comparison,) = compare_groups(stats_of(samples("bot@v1", draws[:60]), samples("bot@v2", draws[60:])), 0.05)
    assert comparison["ttft"]["significant"] is False
    assert "no significant difference" in comparison["ttft"]["verdict"]


def test_error_rates_are_compared_and_tiny_groups_are_not_tested():
    rng = np.random.default_rng(3)
    v1 = samples("bot@v1", rng.normal(0.3, 0.01, 40))
    v2 = samples("bot@v2", rng.normal(0.3, 0.01, 40), errors=20)
    (comparison,) = compare_groups(stats_of(v1, v2), 0.05)
    assert comparison["errors"]["error_rate"] == [0.0, 0.5]
    assert comparison["errors"]["significant"] is True
    (tiny,) = compare_groups(stats_of(samples("x@v1", [0.1, 0.2]), samples("x@v2", [0.3, 0.4])), 0.05)
    assert tiny["ttft"]["p_value"] is None and "too few" in tiny["ttft"]["verdict"]


def test_run_stats_pool_every_gap_and_count_usage_tokens():
    group = samples("m", [0.1, 0.2, 0.3], gap=0.02, errors=1)
    stats = RunStats(group, wall_s=2)
    assert stats.values["itl"].size == 8  # 2 good requests x 4 gaps; failures excluded
    assert stats.output_tokens == 10 and stats.error_rate == 1 / 3
    summary = stats.summary()
    assert summary["ttft_s"]["p50"] == 0.25 and summary["output_tokens_per_s"] == 5.0
