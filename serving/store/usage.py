"""Usage per API key, model and UTC day: the request log in aggregate (table usage_daily).

The writer's batch transaction (logs.RequestLog.write_requests) calls `add_usage` with the batch
it inserts: the batch is grouped in Python first, so one upsert row per (day, key, model) -- an
INSERT .. ON CONFLICT DO UPDATE adding to the counters (SQLite and PostgreSQL, through
SQLAlchemy's dialect inserts). Rows go in primary-key order, so two replicas' batches lock the
same rows in the same order and never deadlock. Being in the same transaction, the aggregate
always equals the sums of the request log's rows (until retention deletes those rows; the
aggregate stays).

    store.usage(key="app", since="2026-12-01", until="2026-12-07")  # [UsageRecord], by day, key, model
    store.key_tokens_on("app", "2026-12-07")                       # {model: tokens in + out}
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from serving.store.models import UsageRow
from serving.store.records import RequestRecord, UsageRecord

_COUNTERS = ("requests", "prompt_tokens", "completion_tokens")


def utc_day(at: float) -> str:
    """POSIX seconds -> its UTC day, YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def group_usage(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """One row per (day, key, model) with the batch's sums, in primary-key order."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        cell = sums.setdefault((utc_day(r.created_at), r.key_name, r.model), [0, 0, 0])
        cell[0] += 1
        cell[1] += r.prompt_tokens or 0
        cell[2] += r.completion_tokens or 0
    return [
        {"day": day, "key_name": key, "model": model, **dict(zip(_COUNTERS, cell, strict=True))}
        for (day, key, model), cell in sorted(sums.items())
    ]


def add_usage(session: Session, records: list[RequestRecord]) -> None:
    """Add `records` to usage_daily, in `session`'s transaction (one upsert, executemany)."""
    rows = group_usage(records)
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UsageRow)
    table = UsageRow.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "key_name", "model"],
        set_={c: table.c[c] + stmt.excluded[c] for c in _COUNTERS},
    )
    session.execute(stmt, rows)


class UsageLog:
    """The usage side of the Store (a mixin: the Store provides `_tx`)."""

    def _tx(self, translate: bool = True) -> AbstractContextManager[Session]:  # provided by Store
        raise NotImplementedError

    def usage(
        self,
        *,
        key: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100_000,
    ) -> list[UsageRecord]:
        """Rows of usage_daily, `since` and `until` (YYYY-MM-DD) both inclusive, by day, key, model."""
        u = UsageRow
        query = sa.select(u).order_by(u.day, u.key_name, u.model).limit(limit)
        if key is not None:
            query = query.where(u.key_name == key)
        if model is not None:
            query = query.where(u.model == model)
        if since is not None:
            query = query.where(u.day >= since)
        if until is not None:
            query = query.where(u.day <= until)
        with self._tx() as s:
            return [
                UsageRecord(r.day, r.key_name, r.model, r.requests, r.prompt_tokens, r.completion_tokens)
                for r in s.scalars(query)
            ]

    def key_tokens_on(self, key: str, day: str) -> dict[str, int]:
        """{model: prompt + completion tokens} of `key` on `day`: what store-backed budgets read.
        A database failure raises (StoreUnavailable)."""
        u = UsageRow
        query = sa.select(u.model, u.prompt_tokens + u.completion_tokens).where(u.key_name == key, u.day == day)
        with self._tx() as s:
            return {model: int(tokens) for model, tokens in s.execute(query)}
