"""What the gateway adds to latency: the same load test straight to an engine and through the gateway,
with `--adapters` (default 1,000) adapters published in the registry.

The engine is the mock (`fakes.engine`: fixed TTFT and inter-token delay, no model),
so every difference is the gateway's own cost: routing, resolution against the registry snapshot,
adapter bookkeeping, SSE relay, metrics. Each round runs, one after the other, same plan (seed):
  direct      loadtest -> mock engine, base model
  gateway     loadtest -> gateway -> mock engine, base model
  adapter     loadtest -> gateway -> mock engine, `bench-adapter@v1` (hot-loaded on first use)
  stable      loadtest -> gateway -> mock engine, bare `bench-adapter` (its stable version)
  no-log      loadtest -> a second gateway with the request log off (store.request_log: false)
The overhead is the median over rounds of (run - direct), per TTFT quantile: rounds alternate, so
a load drift on a shared machine hits every run alike.

    .venv/bin/python benchmarks/gateway_overhead.py --rounds 3 --rate 20 --duration 15s
    # writes runs/bench/gateway-overhead/<run>-<round>/ and benchmarks/reports/gateway-overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fakes.registry import write_mock_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import start_gateway_only, start_mock_engine, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE, ADAPTER = "mock-base", "bench-adapter"
QUANTILES = ("p50", "p95", "p99")


def loadtest(host: str, model: str, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "loraplane", "loadtest", "--host", host, "--model", model,
           "--arrival", args.arrival, "--rate", str(args.rate), "--duration", args.duration,
           "--max-tokens", str(args.tokens), "--slo", "error_rate=0", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=False)
    return json.loads((out / "summary.json").read_text())["overall"]


def add_plan_args(p: argparse.ArgumentParser, duration: str) -> None:
    """The load plan and the mock engine's timing, shared with request_log_overhead.py."""
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--duration", default=duration)
    p.add_argument("--arrival", default="poisson", choices=["constant", "poisson"])
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="the mock's time to first token")
    p.add_argument("--itl-ms", type=float, default=10.0, help="the mock's inter-token delay")


def start_log_on_and_off(tmp: Path, args: argparse.Namespace, procs: list, published: int = 1) -> tuple[str, str, str]:
    """A mock registry (BASE, ADAPTER@v1 and `published` - 1 other adapters), the mock engine, and
    two gateways in front of it, one with the request log on and one with it off (each its own
    SQLite store); every process goes into `procs` as it starts, for the caller to stop.
    (engine url, log-on url, log-off url)."""
    models_dir, adapters_dir = write_mock_registry(tmp, BASE, ADAPTER, ["v1"])
    for i in range(published - 1):
        write_mock_registry(tmp, BASE, f"bench-{i:04d}", ["v1"])
    common = f"base: {BASE}\nregistry:\n  models_dir: {models_dir}\n  adapters_dir: {adapters_dir}\n"
    flags = ["--tokens", str(args.tokens), "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms)]
    engine, engine_url = start_mock_engine(BASE, args.out / "engine.log", *flags)
    procs.append(engine)
    urls = []
    for name, on in (("on", "true"), ("off", "false")):
        config = tmp / f"log-{name}.yaml"
        config.write_text(common + f"store:\n  url: sqlite:///{tmp}/log-{name}.db\n  request_log: {on}\n")
        gateway, url = start_gateway_only(config, engine_url, args.out / f"gateway-log-{name}.log")
        procs.append(gateway)
        urls.append(url)
    return engine_url, urls[0], urls[1]


RUNS = ("direct", "gateway", "adapter", "stable", "no-log")


def cpu_s(proc: subprocess.Popen) -> float:
    """User + system CPU seconds of a running process (Linux /proc: fields 14 and 15, in ticks)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(url: str, model: str, proc: subprocess.Popen, out: Path, args: argparse.Namespace) -> dict:
    """One load test, with the CPU seconds the serving process (`proc`) spent per request: unlike
    latency, that holds still on a machine that other jobs keep busy."""
    before = cpu_s(proc)
    run = loadtest(url, model, out, args)
    keep = {m: run[m] for m in ("requests", "error_rate", "ttft_s", "itl_s", "e2e_s")}
    return {**keep, "cpu_ms_per_request": 1000 * (cpu_s(proc) - before) / max(1, run["requests"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_plan_args(p, duration="15s")
    p.add_argument("--adapters", type=int, default=1000, help="adapters published in the registry")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/bench/gateway-overhead"))
    p.add_argument("--report", type=Path, default=REPO / "benchmarks/reports/gateway-overhead.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    procs: list = []
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="gw-overhead-") as tmp:
        try:
            engine_url, gateway_url, nolog_url = start_log_on_and_off(Path(tmp), args, procs, args.adapters)
            engine, gateway, nolog = procs
            plan = {"direct": (engine_url, BASE, engine), "gateway": (gateway_url, BASE, gateway),
                    "adapter": (gateway_url, f"{ADAPTER}@v1", gateway), "stable": (gateway_url, ADAPTER, gateway),
                    "no-log": (nolog_url, BASE, nolog)}  # fmt: skip
            for i in range(args.rounds):
                runs = {name: measured(*plan[name], args.out / f"{name}-{i}", args) for name in RUNS}
                rounds.append(runs)
                print(f"round {i}: TTFT p50 ms / CPU ms per request " + ", ".join(
                    f"{name} {1000 * run['ttft_s']['p50']:.2f} / {run['cpu_ms_per_request']:.2f}"
                    for name, run in runs.items()), flush=True)  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)
    added = {
        name: {q: statistics.median(r[name]["ttft_s"][q] - r["direct"]["ttft_s"][q] for r in rounds) for q in QUANTILES}
        for name in RUNS[1:]
    }
    cpu = {name: statistics.median(r[name]["cpu_ms_per_request"] for r in rounds) for name in RUNS}
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rounds": rounds,
        "median_added_ttft_s": added,  # per run: median over rounds of (run - direct)
        "request_log_added_ttft_s": {q: added["gateway"][q] - added["no-log"][q] for q in QUANTILES},
        "median_cpu_ms_per_request": cpu,  # the serving process: the engine for direct, else a gateway
    }
    write_result(args.report, result)
    for name, row in added.items():
        print(f"{name:8} added TTFT p50/p95/p99 ms: " + "/".join(f"{1000 * row[q]:+.2f}" for q in QUANTILES)
              + f"; gateway CPU {cpu[name]:.2f} ms per request")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
