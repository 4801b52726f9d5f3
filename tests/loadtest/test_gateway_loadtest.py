"""CI's load test: a short run against a real vLLM CPU engine through the gateway, SLO gate both ways.

Uses the session `gateway` fixture (tests/conftest.py): adapter versions v1/v2 trained by our
trainer, an experiment splitting 50/50 between them, vLLM on CPU behind the real gateway.
"""

import json

import pytest

from tests.loadtest.conftest import run_loadtest

pytestmark = pytest.mark.slow

GENEROUS_SLO = "ttft_p95=30,itl_p95=5,error_rate=0"  # met by any working CPU engine at 1 request/s


def test_met_slo_passes_with_both_variants_and_agrees_with_the_gateway_histogram(gateway, tmp_path):
    out = tmp_path / "ab"
    done = run_loadtest("--host", gateway.url, "--scenario", "ab", "--model", gateway.experiment,
                        "--arrival", "constant", "--rate", "1", "--duration", "20s", "--max-tokens", "8",
                        "--user-keys", "16", "--drain", "120s", "--slo", GENEROUS_SLO, "--out", str(out),
                        timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    overall = summary["overall"]
    assert summary["passed"] and overall["requests"] == 20 and overall["failures"] == 0
    assert overall["output_tokens"] > 0 and overall["usage_missing"] == 0
    assert set(summary["groups"]) == {f"{gateway.adapter}@v1", f"{gateway.adapter}@v2"}
    assert summary["ab_stickiness"]["non_sticky_keys"] == []
    assert len(summary["comparisons"]) == 1 and summary["comparisons"][0]["statement"]
    check = summary["crosscheck"]
    assert check is not None, "the gateway exposes loraplane_time_to_first_token_seconds"
    assert check["overall"]["histogram_count"] == overall["ttft_s"]["n"]
    print(done.stdout)


def test_impossible_slo_fails_the_gate(gateway, tmp_path):
    out = tmp_path / "impossible"
    done = run_loadtest("--host", gateway.url, "--scenario", "single", "--model", f"{gateway.adapter}@v2",
                        "--arrival", "constant", "--rate", "1", "--duration", "5s", "--max-tokens", "4",
                        "--drain", "120s", "--slo", "ttft_p50=1ms,error_rate=0", "--out", str(out),
                        timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {row["slo"]: row["passed"] for row in summary["slos"]}
    assert verdicts == {"ttft_p50": False, "error_rate": True}  # broken by latency, not by errors
    assert "SLO BROKEN" in done.stdout
