"""Run Locust in-process (headless) against the target, then write the report.

    run(cfg) -> exit code: 0 every SLO met, 1 an SLO broken (or no sweep rate met them all)

The order is fixed: probe the target (fail fast, no report of zeros), build the plan, snapshot
/metrics, run Locust until every planned request finished or the drain time ran out, snapshot
/metrics again, judge the SLOs and write the report.
"""

from __future__ import annotations

import locust  # noqa: F401  first: gevent monkey-patches sockets and ssl before httpx loads them

# isort: split
import csv
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gevent
import httpx
from locust.env import Environment
from locust.html import get_html_report
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV, StatsCSVFileWriter, stats_history

from loadtest.config import LoadtestConfig
from loadtest.errors import LoadtestError
from loadtest.report import build_summary, write_report, write_sweep
from loadtest.samples import RequestSample
from loadtest.scenarios import PlannedRequest, build_plan, load_prompts, scenario_named
from loadtest.stream import ENDPOINT_PATHS
from loadtest.target import auth_headers, fetch_metrics, probe
from loadtest.user import OpenAIStreamUser, RunContext

SPAWN_RATE = 100.0  # users/s: Locust warns above this
START_LEAD_S = 0.2  # slack between spawning the last user and the first planned start

log = logging.getLogger("loadtest")


@dataclass
class LoadResult:
    samples: list[RequestSample]
    wall_s: float  # first planned start to last answer


def _unfinished(ctx: RunContext) -> list[RequestSample]:
    """Planned requests with no sample: cut off at the end of the drain, or never started."""
    done = {s.index for s in ctx.samples}
    missing = []
    for planned in ctx.plan:
        if planned.index in done:
            continue
        started = ctx.in_flight.get(planned.index)
        error = (
            "still running when the drain time ran out (raise --drain or lower --rate)"
            if started is not None
            else "never started: every Locust user was busy (raise --max-concurrency or lower --rate)"
        )
        sample = RequestSample(
            planned.index,
            planned.model,
            planned.model,
            planned.user_key,
            planned.prompt_kind,
            planned.at_s,
            (started - ctx.t0) if started else planned.at_s,
            error=error,
        )
        missing.append(sample)
    return missing


def _write_locust_files(env: Environment, out_dir: Path) -> None:
    """Locust's own final CSVs and HTML report (its rounded statistics, for its familiar view)."""
    writer = StatsCSV(env, PERCENTILES_TO_REPORT)
    for suffix, method in (
        ("stats", writer.requests_csv),
        ("failures", writer.failures_csv),
        ("exceptions", writer.exceptions_csv),
    ):
        with (out_dir / f"locust_{suffix}.csv").open("w", newline="") as handle:
            method(csv.writer(handle))
    (out_dir / "locust_report.html").write_text(get_html_report(env, show_download_link=False))


def run_load(cfg: LoadtestConfig, plan: list[PlannedRequest], out_dir: Path) -> LoadResult:
    """Send the plan through Locust; return every planned request's sample."""
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    timeout = httpx.Timeout(cfg.request_timeout_s, connect=10.0)
    client = httpx.Client(base_url=cfg.host, timeout=timeout, limits=limits, headers=auth_headers(cfg.api_key))
    split = scenario_named(cfg.scenario).prompts == "both"
    ctx = RunContext(client, ENDPOINT_PATHS[cfg.endpoint], plan, split)
    user_class = type(
        "OpenAIStreamUser", (OpenAIStreamUser,), {"run_context": ctx, "host": cfg.host, "abstract": False}
    )
    env = Environment(user_classes=[user_class], host=cfg.host, locustfile="loadtest/user.py")
    runner = env.create_local_runner()
    history_writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(out_dir / "locust"), full_history=True)
    background = [gevent.spawn(history_writer.stats_writer), gevent.spawn(stats_history, runner)]
    users = max(1, min(cfg.max_concurrency, len(plan)))
    gevent.get_hub().loop.update_now()  # the loop's cached clock may be stale by the import time
    lead_s = users / SPAWN_RATE + START_LEAD_S  # every user exists before the first planned start
    ctx.t0 = time.perf_counter() + lead_s
    runner.start(users, spawn_rate=SPAWN_RATE)
    ctx.all_done.wait(timeout=lead_s + plan[-1].at_s + cfg.drain_s)
    wall_s = time.perf_counter() - ctx.t0
    runner.quit()
    gevent.killall(background)
    history_writer.close_files()
    client.close()
    ctx.samples.extend(_unfinished(ctx))
    _write_locust_files(env, out_dir)
    return LoadResult(sorted(ctx.samples, key=lambda s: s.index), max(wall_s, 1e-9))


def run_once(cfg: LoadtestConfig, models: list[str], rate: float, out_dir: Path) -> dict[str, Any]:
    """One load test at one rate: plan, run, cross-check, report. Returns the summary."""
    scenario = scenario_named(cfg.scenario)
    plan = build_plan(scenario, models, load_prompts(cfg.prompts), cfg.plan_options(rate))
    if not plan:
        raise LoadtestError(f"--rate {rate} x --duration {cfg.duration_s:g}s plans no request; raise either")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_before = fetch_metrics(cfg.host)
    print(
        f"loadtest: {len(plan)} requests, {cfg.arrival} arrivals at {rate:g}/s for {cfg.duration_s:g}s "
        f"-> {cfg.host} ({cfg.scenario}: {', '.join(models)})",
        flush=True,
    )
    result = run_load(cfg, plan, out_dir)
    metrics_after = fetch_metrics(cfg.host)
    summary = build_summary(cfg, models, rate, result.samples, result.wall_s, metrics_before, metrics_after)
    write_report(out_dir, summary, result.samples)
    return summary


def resolve_models(cfg: LoadtestConfig, served: list[str]) -> list[str]:
    if cfg.models:
        unknown = [m for m in cfg.models if m not in served]
        if unknown:  # experiments may be routable without being listed: warn, don't refuse
            log.warning("loadtest: %s not in %s/v1/models (%s)", unknown, cfg.host, ", ".join(served))
        return cfg.models
    if not served:
        raise LoadtestError(f"{cfg.host}/v1/models lists no model; pass --model")
    return served if scenario_named(cfg.scenario).models == "many" else served[:1]


def default_out_dir(cfg: LoadtestConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs/loadtest") / f"{stamp}-{cfg.scenario}"


def run(cfg: LoadtestConfig) -> int:
    served = probe(cfg.host, cfg.api_key)
    models = resolve_models(cfg, served)
    out_dir = cfg.out or default_out_dir(cfg)
    if not cfg.sweep:
        summary = run_once(cfg, models, cfg.rate, out_dir)
        print(summary["text"], flush=True)
        print(f"loadtest: report in {out_dir}", flush=True)
        return 0 if summary["passed"] else 1
    steps = []
    for rate in cfg.sweep:  # ascending; stop at the first rate that breaks an SLO
        summary = run_once(cfg, models, rate, out_dir / f"rate-{rate:g}")
        steps.append(summary)
        print(summary["text"], flush=True)
        if not summary["passed"]:
            break
    sweep = write_sweep(out_dir, steps)
    print(json.dumps({"best_rate": sweep["best_rate"], "rates": sweep["rates"]}), flush=True)
    print(f"loadtest: sweep report in {out_dir}", flush=True)
    return 0 if sweep["best_rate"] is not None else 1
