"""Usage per key, model and UTC day (serving/store/usage.py) on real SQLite and PostgreSQL: the
aggregate equals the request log's own sums, written through the real writer, and outlives
request-log retention."""

from __future__ import annotations

import random
import time

import pytest
import sqlalchemy as sa

from serving.store import RequestRecord, Store, StoreWriter
from serving.store.connect import create_db_engine, migrate
from serving.store.models import RequestLogRow
from serving.store.usage import group_usage, utc_day

DAY = 86400.0


def records(n: int, start: float, seed: int = 0) -> list[RequestRecord]:
    """n requests over three UTC days by three keys on three models; some without usage (failed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        failed = rng.random() < 0.1
        out.append(
            RequestRecord(
                f"r{seed}-{i}",
                start + rng.uniform(0, 3 * DAY),
                "chat",
                rng.choice(["bot", "other", "base"]),
                "bot@v1",
                rng.choice(["alice", "bob", "carol"]),
                500 if failed else 200,
                0.01,
                prompt_tokens=None if failed else rng.randint(1, 500),
                completion_tokens=None if failed else rng.randint(0, 300),
            )
        )
    return out


def raw_sums(store: Store) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """The request log's own sums per (UTC day, key, model), in Python from whole rows."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    with store.engine.connect() as conn:
        for created, key, model, p, c in conn.execute(
            sa.select(
                RequestLogRow.created_at,
                RequestLogRow.key_name,
                RequestLogRow.model,
                RequestLogRow.prompt_tokens,
                RequestLogRow.completion_tokens,
            )
        ):
            cell = sums.setdefault((utc_day(created), key, model), [0, 0, 0])
            cell[0] += 1
            cell[1] += p or 0
            cell[2] += c or 0
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def aggregate(store: Store, **filters) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    return {
        (u.day, u.key_name, u.model): (u.requests, u.prompt_tokens, u.completion_tokens) for u in store.usage(**filters)
    }


def test_usage_equals_the_request_logs_sums_through_the_writer(store: Store) -> None:
    start = time.time() - 4 * DAY
    batch = records(600, start)
    w = StoreWriter(store, queue_size=1000, batch_size=37, flush_interval_s=0.05, body_retention_s=3600.0)
    w.start()
    for r in batch:
        w.offer(r)
    w.flush().result(30)
    w.stop()
    assert w.dropped == 0
    expected = raw_sums(store)
    assert len(expected) > 20  # many cells, each upserted by several batches
    assert aggregate(store) == expected
    # totals by hand, from the records themselves (not the database)
    assert sum(u.prompt_tokens for u in store.usage()) == sum(r.prompt_tokens or 0 for r in batch)
    assert sum(u.requests for u in store.usage()) == 600


def test_filters_and_inclusive_days(store: Store) -> None:
    start = time.time() - 4 * DAY
    store.write_requests(records(300, start, seed=1))
    everything = aggregate(store)
    day1 = utc_day(start + DAY)
    only = aggregate(store, key="bob", model="bot", since=day1, until=day1)
    assert only and only == {k: v for k, v in everything.items() if k[0] == day1 and k[1:] == ("bob", "bot")}
    assert aggregate(store, since=utc_day(start + 10 * DAY)) == {}
    tokens = store.key_tokens_on("alice", day1)
    assert tokens == {k[2]: v[1] + v[2] for k, v in everything.items() if k[:2] == (day1, "alice")}


def test_usage_outlives_request_log_retention(store: Store) -> None:
    store.write_requests(records(200, time.time() - 40 * DAY, seed=2))
    before = aggregate(store)
    assert store.delete_old_requests(time.time()) == 200
    assert store.requests() == [] and aggregate(store) == before


def test_a_batch_refused_for_its_data_adds_no_usage(store: Store) -> None:
    good = records(5, time.time(), seed=3)
    store.write_requests(good)
    with pytest.raises(sa.exc.IntegrityError):
        store.write_requests([*records(5, time.time(), seed=4), good[0]])  # a repeated id: all rolled back
    assert sum(u.requests for u in store.usage()) == 5


def test_group_usage_sums_a_batch_per_cell_in_key_order() -> None:
    at = 1_765_000_000.0  # 2025-12-06 05:46 UTC
    rows = [
        RequestRecord("a", at, "chat", "m", "none", "k2", 200, 0.1, prompt_tokens=3, completion_tokens=4),
        RequestRecord("b", at + 1, "chat", "m", "none", "k1", 200, 0.1, prompt_tokens=5, completion_tokens=None),
        RequestRecord("c", at + 2, "chat", "m", "none", "k2", 200, 0.1, prompt_tokens=1, completion_tokens=1),
    ]
    cell = {"day": "2025-12-06", "model": "m"}
    assert group_usage(rows) == [
        {**cell, "key_name": "k1", "requests": 1, "prompt_tokens": 5, "completion_tokens": 0},
        {**cell, "key_name": "k2", "requests": 2, "prompt_tokens": 4, "completion_tokens": 5},
    ]


def test_migration_0003_fills_usage_from_the_request_log_already_there(db_url: str) -> None:
    from alembic import command

    from serving.store.connect import _alembic_config

    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0002")
    old = Store(engine)
    batch = records(150, time.time() - 3 * DAY, seed=5)
    with engine.begin() as conn:  # rows written before 0003: straight into request_log
        columns = {c["name"] for c in sa.inspect(conn).get_columns("request_log")}  # 0002's, not later ones
        conn.execute(sa.insert(RequestLogRow), [{k: v for k, v in r.__dict__.items() if k in columns} for r in batch])
    migrate(engine)
    assert aggregate(old) == raw_sums(old) and len(raw_sums(old)) > 5
    old.close()
