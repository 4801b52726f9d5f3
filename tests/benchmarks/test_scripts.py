"""The benchmark scripts stay runnable: each one's imports and argument parser (`--help`), and a
short real run of one against the mock engine. No timing is asserted (numbers go in RESULTS.md);
these catch a refactor that leaves a script importing a helper that moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "bench_common.py")


def run(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=timeout
    )


def test_every_script_is_found() -> None:
    assert {"multi_lora.py", "request_log_overhead.py", "train_throughput.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_imports_and_parses_its_arguments(script: Path) -> None:
    done = run(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_request_log_overhead_runs_against_the_mock_engine(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = run(
        BENCHMARKS / "request_log_overhead.py", "--rounds", "1", "--duration", "1s", "--rate", "10",
        "--out", str(tmp_path / "runs"), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    (only,) = result["rounds"]
    assert only["errors"] == [0.0, 0.0]  # both gateways answered every request
    assert set(result["median_added_ttft_s"]) == {"p50", "p95", "p99"}


def test_results_say_when_and_under_what_load_they_were_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_common import write_result

    out = tmp_path / "r.json"
    assert write_result(out, {"tok_s": 1.5}) == 0
    written = json.loads(out.read_text())
    assert written["tok_s"] == 1.5 and written["written_utc"].endswith("Z")
    assert len(written["loadavg_at_end"]) == 3 and all(x >= 0 for x in written["loadavg_at_end"])
