"""TTFT added by the request log: one gateway with it on, one with it off, same mock engine,
runs alternated (on, off, on, off, ...) so machine load drifts hit both alike.

    .venv/bin/python benchmarks/request_log_overhead.py --rounds 3 --rate 20 --duration 10s
    # writes benchmarks/reports/request-log-overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import BASE, QUANTILES, REPO, add_plan_args, loadtest, start_log_on_and_off  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    add_plan_args(p, duration="10s")
    p.add_argument("--out", type=Path, default=Path("runs/bench/request-log-overhead"))
    p.add_argument("--report", type=Path, default=REPO / "benchmarks/reports/request-log-overhead.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    procs: list = []
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="log-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            _, on_url, off_url = start_log_on_and_off(tmp, args, procs)
            for i in range(args.rounds):
                run_on = loadtest(on_url, BASE, args.out / f"on-{i}", args)
                run_off = loadtest(off_url, BASE, args.out / f"off-{i}", args)
                rounds.append({"on": run_on["ttft_s"], "off": run_off["ttft_s"],
                               "errors": [run_on["error_rate"], run_off["error_rate"]]})  # fmt: skip
                print(f"round {i}: TTFT p50/p99 ms on {1000 * run_on['ttft_s']['p50']:.1f}/"
                      f"{1000 * run_on['ttft_s']['p99']:.1f}  off {1000 * run_off['ttft_s']['p50']:.1f}/"
                      f"{1000 * run_off['ttft_s']['p99']:.1f}", flush=True)  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)
    added = {q: statistics.median(r["on"][q] - r["off"][q] for r in rounds) for q in QUANTILES}
    result = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rounds": rounds,
        "median_added_ttft_s": added,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    print("median added TTFT ms: " + ", ".join(f"{q} {1000 * v:+.2f}" for q, v in added.items()))
    print(f"written: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
