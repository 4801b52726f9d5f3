"""The evaluator's aggregate query at CI size on real PostgreSQL (benchmarks/store_scale.py's
generator, 200k rows): it is planned on the rollout-units index, reads no body column, and its
aggregates equal a plain recount of the rows; and it does not go blind past any row limit (the old
read sorted oldest first, then cut at rollouts.max_requests, so newer failures were never seen)."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import sqlalchemy as sa

from benchmarks.store_scale import evaluation, generate, rollout_record
from serving.store import RequestRecord, Store
from serving.store.connect import create_db_engine, migrate
from serving.store.logs import unit_queries
from tests.serving.conftest import new_postgres_database

ROWS = 200_000


@pytest.fixture(scope="module")
def big(postgres_server_url: str):
    engine = create_db_engine(new_postgres_database(postgres_server_url))
    migrate(engine)
    generate(engine, ROWS, units=5_000)
    store = Store(engine)
    yield store
    store.close()


def test_the_aggregate_query_uses_the_index_and_reads_no_body_column(big: Store) -> None:
    requests, scores = unit_queries("r0", 0.14)
    for query, index in ((requests, "ix_request_log_rollout_units"), (scores, "ix_feedback_rollout_units")):
        sql = query.compile(big.engine, compile_kwargs={"literal_binds": True})
        with big.engine.connect() as conn:
            plan = "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN (VERBOSE) {sql}")))
        assert f"Index Only Scan using {index}" in plan, plan
        assert "request_body" not in plan and "response_text" not in plan and "comment" not in plan, plan


def test_the_aggregates_equal_a_recount_of_the_rows(big: Store) -> None:
    expected: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    with big.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT variant, step, unit, outcome, coalesce(ttft_s, latency_s) FROM request_log "
                "WHERE rollout = 'r0' AND excluded IS NULL"
            )
        ).all()
        rated = conn.execute(
            sa.text("SELECT variant, step, unit, score FROM feedback WHERE rollout = 'r0' AND excluded IS NULL")
        ).all()
    for variant, step, unit, outcome, ttft in rows:
        cell = expected[(variant, step, unit)]
        cell[0] += 1
        cell[1] += outcome == "error"
        cell[2] += ttft > 0.14
    for variant, step, unit, score in rated:
        cell = expected[(variant, step, unit)]
        cell[3] += score
        cell[4] += 1
    got = big.rollout_units("r0", ttft_threshold_s=0.14)
    assert len(got) == len(expected) > 1_000
    for u in got:
        n, errors, over, total, rated_n = expected[(u.variant, u.step, u.unit)]
        assert (u.requests, u.errors, u.ttft_over, u.score_n) == (n, errors, over, rated_n)
        assert u.score_sum == pytest.approx(total)
    assert {u.step for u in got} == {0, 1, 2} and {u.variant for u in got} == {"a0@v1", "a0@v2"}
    assert evaluation(big, rollout_record())[1]  # the benchmark's evaluation runs on this data


def test_failures_logged_after_any_number_of_rows_are_counted(db_url: str) -> None:
    """50,000 clean control rows first, then 100 failing candidate rows: all 100 are counted
    (store.requests with the evaluator's old limit would return only the oldest rows)."""
    store = Store(create_db_engine(db_url))
    migrate(store.engine)
    t0 = time.time()

    def record(i: int, variant: str, error: bool) -> RequestRecord:
        r = RequestRecord(f"id-{i}", t0 + i, "chat", "bot", variant, "k", 500 if error else 200, 0.1, rollout="r")
        r.unit, r.step, r.outcome = f"{i % 500:032x}", 0, "error" if error else "ok"
        return r

    store.write_requests([record(i, "bot@v1", False) for i in range(50_000)])
    store.write_requests([record(50_000 + i, "bot@v2", True) for i in range(100)])
    assert all(r.variant == "bot@v1" for r in store.requests(rollout="r", limit=50_000))  # the old blind spot
    units = store.rollout_units("r", ttft_threshold_s=None)
    candidate = [u for u in units if u.variant == "bot@v2"]
    assert sum(u.requests for u in candidate) == sum(u.errors for u in candidate) == 100
    assert sum(u.requests for u in units if u.variant == "bot@v1") == 50_000
    store.close()
