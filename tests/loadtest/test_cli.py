"""`loraplane loadtest` end to end, as a subprocess, against the mock engine and the real gateway on it."""

import csv
import json

from loadtest.scenarios import SCENARIOS
from tests.loadtest.conftest import BASE, SLOW_VARIANT, free_port, run_loadtest

QUICK = ["--arrival", "constant", "--max-tokens", "6", "--drain", "20s"]


def read_summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_unknown_scenario_is_one_line_listing_the_valid_ones():
    done = run_loadtest("--scenario", "spike", "--model", "m")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert all(name in done.stderr for name in SCENARIOS)


def test_malformed_slo_and_unknown_flag_exit_2_on_one_line():
    for args in (["--slo", "ttft_p95=fast"], ["--slo", "p95=1"], ["--rate", "many"], ["--no-such-flag"]):
        done = run_loadtest(*args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "ttft_pQ" in run_loadtest("--slo", "p95=1").stderr


def test_unreachable_gateway_fails_at_start_without_a_report(tmp_path):
    out = tmp_path / "report"
    done = run_loadtest("--host", f"http://127.0.0.1:{free_port()}", "--out", str(out), "--slo", "error_rate=0")
    assert done.returncode == 3
    assert "cannot reach" in done.stderr and "no load sent" in done.stderr
    assert not out.exists()


def test_met_slo_passes_and_the_report_holds_every_sample(mock_engine, tmp_path):
    out = tmp_path / "ok"
    done = run_loadtest("--host", mock_engine.url, "--model", BASE, "--rate", "10", "--duration", "2s", *QUICK,
                        "--slo", "ttft_p95=10,itl_p95=10,e2e_p99=20,error_rate=0", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = read_summary(out)
    overall = summary["overall"]
    assert summary["passed"] and overall["requests"] == 20 and overall["failures"] == 0
    assert overall["ttft_s"]["n"] == 20 and overall["itl_s"]["n"] == 20 * 5 and overall["output_tokens"] == 120
    assert list(summary["groups"]) == [BASE]
    assert [row["passed"] for row in summary["slos"]] == [True] * 4
    with (out / "locust_stats.csv").open() as handle:
        counts = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(handle)}
    assert counts[f"TTFT {BASE}"] == 20 and counts[f"ITL {BASE}"] == 100 and counts[f"E2E {BASE}"] == 20
    with (out / "requests.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 20
    for name in ("latency_distributions.png", "ttft_over_time.png", "locust_report.html", "locust_stats_history.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "SLOs met" in (out / "index.html").read_text()


def test_broken_slo_exits_1_and_names_it(mock_engine, mock_settings, tmp_path):
    mock_settings.error_rate = 0.5  # injected HTTP 500s
    out = tmp_path / "broken"
    done = run_loadtest("--host", mock_engine.url, "--model", BASE, "--rate", "10", "--duration", "1s", *QUICK,
                        "--slo", "error_rate=0,ttft_p50=1ms", "--out", str(out))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLO BROKEN" in done.stdout
    summary = read_summary(out)
    assert not summary["passed"] and [row["passed"] for row in summary["slos"]] == [False, False]
    assert summary["overall"]["failures"] > 0 and summary["errors"][0]["error"].startswith("HTTP 500")


def test_ab_through_the_real_gateway_splits_sticky_variants_and_finds_the_slow_one(gateway_on_mock, tmp_path):
    out = tmp_path / "ab"
    done = run_loadtest("--host", gateway_on_mock.url, "--scenario", "ab", "--model", gateway_on_mock.experiment,
                        "--rate", "20", "--duration", "3s", "--user-keys", "40", *QUICK, "--slo", "error_rate=0",
                        "--slo-scope", "each-group", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = read_summary(out)
    v1, v2 = f"{gateway_on_mock.adapter}@v1", SLOW_VARIANT
    assert list(summary["groups"]) == [v1, v2]
    assert [(row["scope"], row["passed"]) for row in summary["slos"]] == [("overall", True), (v1, True), (v2, True)]
    sticky = summary["ab_stickiness"]
    assert sticky["non_sticky_keys"] == [] and min(sticky["keys_per_variant"].values()) > 0
    (comparison,) = summary["comparisons"]
    assert (comparison["baseline"], comparison["variant"]) == (v1, v2)
    assert comparison["ttft"]["significant"] is True and comparison["ttft"]["change"] > 0  # the mock slows v2
    check = summary["crosscheck"]
    assert check["overall"]["histogram_count"] == summary["overall"]["requests"] == 60
    assert set(check["groups"]) == {v1, v2}
    assert check["overall"]["p50"]["histogram_s"] is not None


def test_sweep_reports_the_highest_rate_meeting_the_slos(mock_engine, tmp_path):
    out = tmp_path / "sweep"
    done = run_loadtest("--host", mock_engine.url, "--model", BASE, "--sweep", "2,4", "--duration", "1s", *QUICK,
                        "--slo", "error_rate=0", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["best_rate"] == 4 and [r["rate"] for r in sweep["rates"]] == [2, 4]
    assert read_summary(out / "rate-4")["overall"]["requests"] == 4
    assert (out / "sweep.png").stat().st_size > 0
