"""What the gateway adds to latency: the same load test straight to an engine and through the gateway.

The engine is the mock (`fakes.engine`: fixed TTFT and inter-token delay, no model),
so every difference is the gateway's own cost: routing, adapter bookkeeping, SSE relay, metrics.
Four runs, one after the other, same plan (seed):
  direct      loadtest -> mock engine, base model
  gateway     loadtest -> gateway -> mock engine, base model
  adapter     loadtest -> gateway -> mock engine, an adapter version (hot-loaded on first use)
  no-log      loadtest -> a second gateway with the request log off (store.request_log: false)

    .venv/bin/python benchmarks/gateway_overhead.py --rate 20 --duration 20s
    # writes runs/bench/gateway-overhead/{direct,gateway,adapter,no-log}/ and overhead.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fakes.registry import write_mock_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import start_gateway_only, start_mock_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE, ADAPTER = "mock-base", "bench-adapter"
QUANTILES = ("p50", "p95", "p99")


def loadtest(host: str, model: str, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "loraplane", "loadtest", "--host", host, "--model", model,
           "--arrival", args.arrival, "--rate", str(args.rate), "--duration", args.duration,
           "--max-tokens", str(args.tokens), "--slo", "error_rate=0", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=False)
    return json.loads((out / "summary.json").read_text())["overall"]


def overhead(direct: dict, routed: dict) -> dict[str, dict[str, float | None]]:
    rows: dict[str, dict[str, float | None]] = {}
    for metric in ("ttft_s", "itl_s", "e2e_s"):
        for q in QUANTILES:
            a, b = direct[metric][q], routed[metric][q]
            rows.setdefault(metric, {})[q] = None if a is None or b is None else b - a
    return rows


def add_plan_args(p: argparse.ArgumentParser, duration: str) -> None:
    """The load plan and the mock engine's timing, shared with request_log_overhead.py."""
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--duration", default=duration)
    p.add_argument("--arrival", default="poisson", choices=["constant", "poisson"])
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="the mock's time to first token")
    p.add_argument("--itl-ms", type=float, default=10.0, help="the mock's inter-token delay")


def start_log_on_and_off(tmp: Path, args: argparse.Namespace, procs: list) -> tuple[str, str, str]:
    """A mock registry (BASE, ADAPTER@v1), the mock engine, and two gateways in front of it, one with
    the request log on and one with it off (each its own SQLite store); every process goes into
    `procs` as it starts, for the caller to stop. (engine url, log-on url, log-off url)."""
    models_dir, adapters_dir = write_mock_registry(tmp, BASE, ADAPTER, ["v1"])
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_plan_args(p, duration="20s")
    p.add_argument("--out", type=Path, default=Path("runs/bench/gateway-overhead"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    procs = []
    with tempfile.TemporaryDirectory(prefix="gw-overhead-") as tmp:
        try:
            engine_url, gateway_url, nolog_url = start_log_on_and_off(Path(tmp), args, procs)
            runs = {
                "direct": loadtest(engine_url, BASE, args.out / "direct", args),
                "gateway": loadtest(gateway_url, BASE, args.out / "gateway", args),
                "adapter": loadtest(gateway_url, f"{ADAPTER}@v1", args.out / "adapter", args),
                "no-log": loadtest(nolog_url, BASE, args.out / "no-log", args),
            }
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": {
            name: {m: run[m] for m in ("requests", "error_rate", "ttft_s", "itl_s", "e2e_s")}
            for name, run in runs.items()
        },  # fmt: skip
        "overhead_vs_direct_s": {
            name: overhead(runs["direct"], runs[name]) for name in ("gateway", "adapter", "no-log")
        },
        "request_log_added_ttft_s": overhead(runs["no-log"], runs["gateway"])["ttft_s"],
    }
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'run':8} {'TTFT p50/p95/p99 ms':>24} {'ITL p50/p95/p99 ms':>24}  errors")
    for name, run in runs.items():
        ttft = "/".join(f"{1000 * run['ttft_s'][q]:.1f}" for q in QUANTILES)
        itl = "/".join(f"{1000 * run['itl_s'][q]:.2f}" for q in QUANTILES)
        print(f"{name:8} {ttft:>24} {itl:>24}  {run['error_rate']}")
    print(f"written: {args.out / 'overhead.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
