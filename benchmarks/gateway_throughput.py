"""Gateway cost per request against a mock streaming engine (no model), in one run:

- added latency: sequential requests alternating direct-to-engine and through-the-gateway
  (TTFT and end-to-end p50/p99 of each; the difference is the gateway's cost);
- throughput: closed-loop streaming requests from C concurrent clients for T seconds, with
  the gateway pinned to ONE core (`taskset`), engine and load generator on the other; and the
  gateway's own CPU time per request (from /proc, user + system), so req/s per core is known
  even when the load generator, not the gateway, is what saturates.

    .venv/bin/python benchmarks/gateway_throughput.py   # writes runs/bench/gateway_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    REPO,
    exit_on_sigterm,
    free_port,
    percentile,
    shown_args,
    spawn_healthy,
    stream_chat,
    write_result,
)

BASE = "smollm2-135m-instruct"
BODY = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}


async def drain(client: httpx.AsyncClient, url: str) -> None:
    """One streamed request read to its end (the closed loop counts requests, it does not time them)."""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=BODY) as resp:
        async for _ in resp.aiter_lines():
            pass


def added_latency(engine: str, gateway: str, pairs: int) -> dict:
    """Sequential pairs, timed by the load test's SSE client (TTFT = first content token)."""
    with httpx.Client(timeout=30) as client:

        def timed(url: str) -> tuple[float, float]:
            r = stream_chat(client, url, BASE, "hi", 8)
            return r["ttft_s"], r["e2e_s"]

        for _ in range(50):  # warm up both paths
            timed(engine)
            timed(gateway)
        direct, via = [], []
        for _ in range(pairs):
            direct.append(timed(engine))
            via.append(timed(gateway))
    out = {}
    for i, key in enumerate(("ttft", "e2e")):
        for q, p in (("p50", 50), ("p99", 99)):
            d, g = percentile([r[i] for r in direct], p), percentile([r[i] for r in via], p)
            out[f"{key}_{q}"] = {"direct_ms": 1000 * d, "gateway_ms": 1000 * g, "added_ms": 1000 * (g - d)}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def saturate(url: str, concurrency: int, seconds: float) -> tuple[float, int]:
    """Closed loop for `seconds`: (requests per second, requests done)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await drain(client, url)
            done += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        return done / (time.perf_counter() - started), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "runs/bench/gateway_throughput.json")
    args = parser.parse_args()
    exit_on_sigterm()
    logs = REPO / "runs/bench/logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    e_port, g_port = free_port(), free_port()
    engine_url, gateway_url = f"http://127.0.0.1:{e_port}", f"http://127.0.0.1:{g_port}"
    engine = spawn_healthy(
        [py, "-m", "fakes.engine", "--port", str(e_port), "--tokens", "8", "--ttft-ms", "0", "--itl-ms", "0"],
        engine_url,
        logs / "mock.log",
        cpu=1,
    )
    gateway = spawn_healthy(
        [
            py,
            "-m",
            "loraplane",
            "serve",
            "--gateway-only",
            "--engine-url",
            engine_url,
            "--port",
            str(g_port),
            "--config",
            "configs/serving/default.yaml",
        ],
        gateway_url,
        logs / "gateway.log",
        cpu=0,
        timeout_s=30,
    )
    try:
        taskset_self = ["taskset", "-p", "-c", "1", str(os.getpid())]
        subprocess.run(taskset_self, capture_output=True, check=False)  # load generator beside the engine
        latency = added_latency(engine_url, gateway_url, args.pairs)
        direct_rps, _ = asyncio.run(saturate(engine_url, args.concurrency, args.seconds))
        cpu_before = cpu_seconds(gateway.pid)
        gateway_rps, gateway_done = asyncio.run(saturate(gateway_url, args.concurrency, args.seconds))
        gateway_cpu_ms = 1000 * (cpu_seconds(gateway.pid) - cpu_before) / gateway_done
    finally:
        for proc in (gateway, engine):
            proc.terminate()
            proc.wait(timeout=20)
    result = {
        "added_latency": latency,
        "throughput_rps": {"direct_to_mock": direct_rps, "through_gateway_1_core": gateway_rps},
        "gateway_cpu_ms_per_request": gateway_cpu_ms,
        "gateway_rps_per_core_from_cpu_time": 1000 / gateway_cpu_ms,
        "args": shown_args(args),
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
