import numpy as np
import pytest

from loadtest.errors import UsageError
from loadtest.samples import RequestSample, RunStats
from loadtest.slo import check, parse_slos


def sample(index: int, ttft: float | None = 0.1, gaps=(0.01, 0.02), error: str | None = None) -> RequestSample:
    return RequestSample(index, "m", "m", None, "short", 0.0, 0.0, 200, ttft_s=ttft, gaps_s=list(gaps),
                         e2e_s=0.5, output_tokens=3, error=error)  # fmt: skip


def test_parse_the_issue_example():
    slos = {s.key: s for s in parse_slos("ttft_p95=0.5,itl_p95=0.1,error_rate=0")}
    assert (slos["ttft_p95"].metric, slos["ttft_p95"].percentile, slos["ttft_p95"].limit) == ("ttft", 95.0, 0.5)
    assert slos["itl_p95"].limit == 0.1
    assert (slos["error_rate"].metric, slos["error_rate"].limit) == ("error_rate", 0.0)


def test_parse_units_and_fractional_percentiles():
    slos = {s.key: s for s in parse_slos("itl_p99.9=80ms, e2e_p50=2s")}
    assert slos["itl_p99.9"].percentile == 99.9
    assert slos["itl_p99.9"].limit == pytest.approx(0.08)
    assert slos["e2e_p50"].limit == 2.0


@pytest.mark.parametrize(
    "spec",
    ["ttft_p95", "ttft_p95=", "ttft_p95=fast", "latency_p95=1", "ttft_p100=1", "ttft_p0=1", "error_rate=2",
     "error_rate=5ms", "ttft_p95=-1", "ttft_p95=1,ttft_p95=2", ""],
)  # fmt: skip
def test_malformed_slo_is_one_line_listing_valid_keys(spec):
    with pytest.raises(UsageError) as info:
        parse_slos(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "ttft_pQ" in message and "error_rate" in message
    assert info.value.exit_code == 2


def test_check_judges_exact_percentiles_of_raw_samples():
    samples = [sample(i, ttft=0.1 * (i + 1)) for i in range(10)]  # 0.1 .. 1.0
    stats = RunStats(samples, wall_s=10)
    exact = float(np.percentile([0.1 * (i + 1) for i in range(10)], 90))
    results = {r.slo.key: r for r in check(parse_slos(f"ttft_p90={exact},ttft_p95={exact}"), stats)}
    assert results["ttft_p90"].passed
    assert not results["ttft_p95"].passed  # the p95 lies above the p90


def test_error_rate_slo_counts_failures():
    samples = [sample(0), sample(1), sample(2), sample(3, error="HTTP 500: boom")]
    results = check(parse_slos("error_rate=0.25,ttft_p50=10"), RunStats(samples, wall_s=1))
    assert [r.passed for r in results] == [True, True]
    assert results[0].observed == 0.25
    assert not check(parse_slos("error_rate=0.2"), RunStats(samples, wall_s=1))[0].passed


def test_latency_slo_without_samples_is_broken_not_met():
    failed = [sample(i, error="HTTP 503: down") for i in range(3)]
    result = check(parse_slos("ttft_p95=100"), RunStats(failed, wall_s=1))[0]
    assert result.observed is None
    assert not result.passed
    assert "no samples" in result.line()
