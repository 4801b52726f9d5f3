"""Turn one run's raw samples into the report directory.

summary.json     config, per-group and overall statistics, SLO verdicts, comparison, cross-check
requests.csv     one row per planned request (the raw samples; ITL gaps in samples.jsonl)
samples.jsonl    every sample with its inter-token gaps
index.html       the report: SLOs, per-variant table and comparison, plots
*.png            latency distributions and TTFT over time, split by variant
locust_*.csv, locust_report.html   Locust's own view (written by loadtest.run)
"""

from __future__ import annotations

import csv
import html
import json
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.compare import compare_groups
from loadtest.config import LoadtestConfig
from loadtest.plots import plot_sweep, write_plots
from loadtest.promcheck import cross_check
from loadtest.samples import RequestSample, RunStats, group_samples
from loadtest.slo import SloResult, check

LATE_START_S = 0.05  # a request that starts later than planned by more than this was held up
CSV_COLUMNS = (
    "index", "group", "model", "user_key", "prompt_kind", "scheduled_s", "start_s", "status", "variant",
    "adapter", "ttft_s", "e2e_s", "output_tokens", "prompt_tokens", "content_chunks", "error",
)  # fmt: skip


def _open_loop(samples: list[RequestSample], rate: float) -> dict[str, Any]:
    lags = [s.lag_s for s in samples]
    late = sum(1 for lag in lags if lag > LATE_START_S)
    return {
        "planned": len(samples),
        "target_rate": rate,
        "late_starts": late,
        "max_start_lag_s": max(lags) if lags else None,
        "note": None
        if not late
        else f"{late} requests started >{LATE_START_S}s late: the load generator fell behind the plan "
        "(starved of CPU, or every --max-concurrency slot busy with a slow answer)",
    }


def _stickiness(samples: list[RequestSample]) -> dict[str, Any] | None:
    """In an experiment every user key must always land on the same variant."""
    seen: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.user_key and s.variant:
            seen[s.user_key].add(s.variant)
    if not seen:
        return None
    split = sorted(k for k, variants in seen.items() if len(variants) > 1)
    share = Counter(next(iter(v)) for v in seen.values() if len(v) == 1)
    return {"user_keys": len(seen), "keys_per_variant": dict(sorted(share.items())), "non_sticky_keys": split}


def _top_errors(samples: list[RequestSample]) -> list[dict[str, Any]]:
    counts = Counter(s.error for s in samples if s.error)
    return [{"error": error, "count": count} for error, count in counts.most_common(5)]


def build_summary(
    cfg: LoadtestConfig,
    models: list[str],
    rate: float,
    samples: list[RequestSample],
    wall_s: float,
    metrics_before: str | None,
    metrics_after: str | None,
) -> dict[str, Any]:
    overall = RunStats(samples, wall_s)
    groups = {label: RunStats(group, wall_s) for label, group in group_samples(samples).items()}
    results = check(cfg.slos, overall, "overall")
    if cfg.slo_scope == "each-group":
        for label, stats in groups.items():
            results += check(cfg.slos, stats, label)
    crosscheck = None
    if metrics_after:
        crosscheck = cross_check(
            metrics_before, metrics_after, models, {k: v.values["ttft"] for k, v in groups.items()}
        )
    summary: dict[str, Any] = {
        "passed": all(r.passed for r in results),
        "config": {**cfg.public(), "rate": rate},
        "models": models,
        "wall_s": round(wall_s, 3),
        "overall": overall.summary(),
        "groups": {label: stats.summary() for label, stats in groups.items()},
        "slos": [_slo_row(r) for r in results],
        "comparisons": compare_groups(groups, cfg.alpha),
        "crosscheck": crosscheck,
        "open_loop": _open_loop(samples, rate),
        "ab_stickiness": _stickiness(samples),
        "errors": _top_errors(samples),
    }
    summary["text"] = summary_text(summary, results)
    return summary


def _slo_row(result: SloResult) -> dict[str, Any]:
    return {"slo": result.slo.key, "scope": result.scope, "limit": result.slo.limit, "observed": result.observed,
            "passed": result.passed}  # fmt: skip


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)


def summary_text(summary: dict[str, Any], results: list[SloResult]) -> str:
    """The console view: one line per group, then SLOs, comparison and cross-check."""
    lines = [f"{'group':28} {'reqs':>5} {'err%':>6} {'TTFT p50/p95/p99 s':>22} {'ITL p50/p95/p99 s':>22} "
             f"{'E2E p50/p95 s':>15}"]  # fmt: skip
    rows = {**summary["groups"], "overall": summary["overall"]}
    for label, stats in rows.items():
        t, i, e = stats["ttft_s"], stats["itl_s"], stats["e2e_s"]
        err = stats["error_rate"]
        lines.append(
            f"{label[:28]:28} {stats['requests']:>5} {'-' if err is None else f'{100 * err:.1f}':>6} "
            f"{'/'.join(_fmt(t[q]) for q in ('p50', 'p95', 'p99')):>22} "
            f"{'/'.join(_fmt(i[q]) for q in ('p50', 'p95', 'p99')):>22} "
            f"{'/'.join(_fmt(e[q]) for q in ('p50', 'p95')):>15}"
        )
    lines += [r.line() for r in results] or ["(no SLOs given)"]
    lines += [c["statement"] for c in summary["comparisons"]]
    lines += [f"error x{e['count']}: {e['error']}" for e in summary["errors"][:3]]
    if note := summary["open_loop"]["note"]:
        lines.append(f"warning: {note}")
    if summary["crosscheck"]:
        overall = summary["crosscheck"]["overall"]
        agree = [overall[q]["agree"] for q in ("p50", "p95", "p99")]
        lines.append(f"TTFT cross-check with the gateway histogram (p50, p95, p99 agree within a bucket): {agree}")
    lines.append("SLOs met" if summary["passed"] else "SLO BROKEN")
    return "\n".join(lines)


def write_report(out_dir: Path, summary: dict[str, Any], samples: list[RequestSample]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out_dir / "requests.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in samples:
            writer.writerow([getattr(s, column) for column in CSV_COLUMNS])
    with (out_dir / "samples.jsonl").open("w") as handle:
        for s in samples:
            handle.write(json.dumps(asdict(s)) + "\n")
    plots = write_plots(out_dir, samples)
    (out_dir / "index.html").write_text(render_html(summary, plots))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any], plots: list[str]) -> str:
    groups = {**summary["groups"], "overall": summary["overall"]}
    header = ["group", "requests", "error rate"] + [
        f"{m} {q}" for m in ("TTFT", "ITL", "E2E") for q in ("p50", "p95", "p99")
    ]
    rows = [
        [label, s["requests"], s["error_rate"]]
        + [s[f"{m}_s"][q] for m in ("ttft", "itl", "e2e") for q in ("p50", "p95", "p99")]
        for label, s in groups.items()
    ]
    slos = [[r["scope"], r["slo"], r["limit"], r["observed"], "met" if r["passed"] else "BROKEN"]
            for r in summary["slos"]]  # fmt: skip
    statements = "".join(f"<li>{html.escape(c['statement'])}</li>" for c in summary["comparisons"])
    verdict = "SLOs met" if summary["passed"] else "SLO broken"
    parts = [
        f"<h1>Load test: {html.escape(str(summary['config']['scenario']))} - {verdict}</h1>",
        f"<pre>{html.escape(json.dumps(summary['config'], indent=1))}</pre>",
        "<h2>SLOs</h2>", _table(["scope", "SLO", "limit", "observed", "verdict"], slos),
        "<h2>Per variant (seconds, exact percentiles of raw samples)</h2>", _table(header, rows),
        f"<h2>Comparison</h2><ul>{statements or '<li>one group only</li>'}</ul>",
        f"<h2>TTFT cross-check with the gateway histogram</h2><pre>{html.escape(json.dumps(summary['crosscheck'], indent=1))}</pre>",  # noqa: E501
        f"<h2>Open loop</h2><pre>{html.escape(json.dumps(summary['open_loop'], indent=1))}</pre>",
        f"<h2>A/B stickiness</h2><pre>{html.escape(json.dumps(summary['ab_stickiness'], indent=1))}</pre>",
        f"<h2>Errors</h2><pre>{html.escape(json.dumps(summary['errors'], indent=1))}</pre>",
        *(f'<h2>{html.escape(p)}</h2><img src="{html.escape(p)}" width="900">' for p in plots),
        '<p>Locust\'s own view: <a href="locust_report.html">locust_report.html</a>, locust_*.csv</p>',
    ]  # fmt: skip
    style = "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}"  # noqa: E501
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"  # noqa: E501


def write_sweep(out_dir: Path, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep summary: each rate's verdict and headline numbers; best_rate = highest rate meeting every SLO."""
    rates = []
    for step in steps:
        overall = step["overall"]
        rates.append({
            "rate": step["config"]["rate"],
            "passed": step["passed"],
            "ttft_p95_s": overall["ttft_s"]["p95"],
            "itl_p95_s": overall["itl_s"]["p95"],
            "error_rate": overall["error_rate"],
            "output_tokens_per_s": overall["output_tokens_per_s"],
        })  # fmt: skip
    passing = [r["rate"] for r in rates if r["passed"]]
    sweep = {"best_rate": max(passing) if passing else None, "rates": rates}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    plot_sweep(out_dir / "sweep.png", rates)
    return sweep
