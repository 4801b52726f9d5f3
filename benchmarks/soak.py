"""Soak: the gateway under mixed traffic for a long time, against the mock engine.

Traffic (weights per request): full streams, streams the client drops after the first chunk,
non-streamed answers, and refusals the gateway must answer itself (bad role 400, body over
gateway.max_body_bytes 413, unknown model 404, missing key 401, a key over its rate limit 429).
The mock engine answers a fraction of completions with HTTP 500 (upstream errors), which the
gateway must relay as that request's error and never turn into its own 5xx.

Pass: 0 gateway 5xx (any 5xx that is not the engine's injected 500) and the gateway's RSS grows
less than 5% from the end of warm-up to the end.

    .venv/bin/python benchmarks/soak.py --duration-s 1800
    # writes benchmarks/reports/serving/soak.json and soak.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import REPO, exit_on_sigterm, shown_args, start_gateway_only, start_mock_engine, write_result  # noqa: E402

from fakes.registry import write_mock_registry  # noqa: E402

BASE, ADAPTER, EXPERIMENT = "mock-base", "soak-adapter", "soak-ab"
KEY, LIMITED = "soak-key", "limited-key"
MAX_BODY = 64 * 1024
KINDS = {  # kind -> weight
    "stream": 30,
    "disconnect": 15,
    "json": 25,
    "bad_role": 6,
    "too_large": 6,
    "unknown_model": 6,
    "no_key": 6,
    "rate_limited": 6,
}
MODELS = (BASE, ADAPTER, f"{ADAPTER}@v1", f"{ADAPTER}@v2", EXPERIMENT)


def write_config(root: Path) -> Path:
    import hashlib

    models, adapters = write_mock_registry(root, BASE, ADAPTER, ["v1", "v2"])
    sha = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY, LIMITED)}
    cfg = {
        "base": BASE,
        "registry": {"models_dir": str(models), "adapters_dir": str(adapters)},
        "gateway": {"max_body_bytes": MAX_BODY},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": "soak", "sha256": sha[KEY]},
                {"name": "limited", "sha256": sha[LIMITED], "rate_limit_per_minute": 30},
            ],
        },
        "experiments": [{"name": EXPERIMENT, "variants": {f"{ADAPTER}@v1": 50, f"{ADAPTER}@v2": 50}}],
    }
    path = root / "soak.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def request_for(kind: str, rng: random.Random) -> tuple[dict, dict[str, str]]:
    """(JSON body, headers) for one request of `kind`."""
    model = rng.choice(MODELS)
    body: dict = {"model": model, "messages": [{"role": "user", "content": "soak"}], "user": f"u{rng.randrange(500)}"}
    headers = {"Authorization": f"Bearer {KEY}"}
    if kind in ("stream", "disconnect"):
        body |= {"stream": True, "max_tokens": rng.choice((8, 16, 24))}
    elif kind == "json":
        body["max_tokens"] = rng.choice((4, 16))
    elif kind == "bad_role":
        body["messages"] = [{"role": "wizard", "content": "soak"}]
    elif kind == "too_large":
        body["messages"] = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    elif kind == "unknown_model":
        body["model"] = f"no-such-model-{rng.randrange(1000)}"
    elif kind == "no_key":
        headers = {}
    elif kind == "rate_limited":
        headers = {"Authorization": f"Bearer {LIMITED}"}
    return body, headers


async def one(client: httpx.AsyncClient, url: str, kind: str, rng: random.Random) -> tuple[int, str]:
    """(status, outcome): outcome 'engine_500' for the mock's injected faults, 'gateway_5xx' for ours."""
    body, headers = request_for(kind, rng)
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        if kind == "disconnect" and resp.status_code == 200:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    break  # leaving the block closes the connection mid-stream
            return resp.status_code, "disconnected"
        raw = await resp.aread()
    if resp.status_code >= 500:
        return resp.status_code, "engine_500" if b"injected fault" in raw else "gateway_5xx"
    if resp.status_code == 200 and body.get("stream"):
        text = raw.decode()
        if '"error"' in text:
            return 200, "stream_error_event"
        return 200, "complete" if text.rstrip().endswith("data: [DONE]") else "truncated"
    return resp.status_code, "ok"


async def worker(url: str, deadline: float, seed: int, counts: Counter, errors: list[str]) -> None:
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            try:
                status, outcome = await one(client, url, kind, rng)
            except httpx.HTTPError as exc:
                status, outcome = 0, f"client_error:{type(exc).__name__}"
                errors.append(f"{kind}: {exc!r}")
            counts[(kind, status, outcome)] += 1


async def sampler(pid: int, deadline: float, every_s: float, samples: list[dict], bar: tqdm) -> None:
    started = time.monotonic()
    while True:
        now = time.monotonic()
        samples.append({"t_s": round(now - started, 1), "rss_bytes": rss_bytes(pid), "loadavg_1m": os.getloadavg()[0]})
        bar.n = min(bar.total, int(now - started))
        bar.refresh()
        if now >= deadline:
            return
        await asyncio.sleep(min(every_s, max(0.0, deadline - now)))


async def run_load(url: str, pid: int, args: argparse.Namespace) -> tuple[Counter, list[str], list[dict]]:
    counts: Counter = Counter()
    errors: list[str] = []
    samples: list[dict] = []
    deadline = time.monotonic() + args.duration_s
    with tqdm(total=int(args.duration_s), unit="s", desc="soak") as bar:
        await asyncio.gather(
            sampler(pid, deadline, args.sample_s, samples, bar),
            *(worker(url, deadline, args.seed + i, counts, errors) for i in range(args.concurrency)),
        )
    return counts, errors, samples


def in_flight_streams(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "loraplane_in_flight_streams")
    return family.samples[0].value


def plot(samples: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([s["t_s"] / 60 for s in samples], [s["rss_bytes"] / 2**20 for s in samples], label="gateway RSS")
    ax.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_title("Gateway RSS under soak (mock engine)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summarize(counts: Counter, samples: list[dict], errors: list[str], args: argparse.Namespace) -> dict:
    warm = [s for s in samples if s["t_s"] >= args.warmup_s] or samples
    rss0, rss1 = warm[0]["rss_bytes"], warm[-1]["rss_bytes"]
    by_status: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    for (kind, status, outcome), n in counts.items():
        by_status[str(status)] += n
        by_kind.setdefault(kind, Counter())[f"{status} {outcome}"] += n
    gateway_5xx = sum(n for (_, _, outcome), n in counts.items() if outcome == "gateway_5xx")
    growth = (rss1 - rss0) / rss0
    return {
        "requests": sum(counts.values()),
        "by_status": dict(sorted(by_status.items())),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "gateway_5xx": gateway_5xx,
        "stream_error_events": sum(n for (_, _, o), n in counts.items() if o == "stream_error_event"),
        "client_errors": errors[:20],
        "rss_after_warmup_bytes": rss0,
        "rss_end_bytes": rss1,
        "rss_max_bytes": max(s["rss_bytes"] for s in samples),
        "rss_growth_fraction": round(growth, 4),
        "loadavg_1m_mean": round(sum(s["loadavg_1m"] for s in samples) / len(samples), 2),
        "rss_samples": samples,
        "pass": gateway_5xx == 0 and growth < 0.05 and not errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--warmup-s", type=float, default=120.0, help="RSS growth is measured from here to the end")
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--error-rate", type=float, default=0.02, help="the mock engine's share of HTTP 500s")
    p.add_argument("--sample-s", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/reports/serving/soak.json")
    args = p.parse_args(argv)
    exit_on_sigterm()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="loraplane-soak-") as tmp:
        root = Path(tmp)
        try:
            flags = ["--tokens", "24", "--ttft-ms", "20", "--itl-ms", "4", "--error-rate", str(args.error_rate)]
            engine, engine_url = start_mock_engine(BASE, root / "engine.log", *flags)
            procs.append(engine)
            gateway, url = start_gateway_only(write_config(root), engine_url, root / "gateway.log")
            procs.append(gateway)
            counts, errors, samples = asyncio.run(run_load(url, procs[-1].pid, args))
            time.sleep(2.0)  # every dropped stream has ended by now: nothing may stay counted in flight
            streams_left = in_flight_streams(url)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)
    result = summarize(counts, samples, errors, args)
    result["in_flight_streams_after"] = streams_left
    result["pass"] = result["pass"] and streams_left == 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(samples, args.warmup_s, args.out.with_suffix(".png"))
    write_result(args.out, {"benchmark": "soak", "args": shown_args(args), **result})
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
