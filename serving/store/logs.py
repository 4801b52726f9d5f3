"""The request log and feedback side of the Store: writes (through the writer), the per-unit
aggregates rollouts decide on, and retention.

Nothing here that a decision reads touches a body column: `rollout_units` selects only indexed
columns (the partial covering index ix_request_log_rollout_units / ix_feedback_rollout_units, see
models.py), so its cost grows with a rollout's rows and units, never with captured bodies.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from serving.store.models import FeedbackRow, RequestLogRow, RolloutRow
from serving.store.records import (
    ACTIVE_ROLLOUT_STATES,
    USER_SOURCE,
    FeedbackRecord,
    RequestRecord,
    StepMoments,
)
from serving.store.unit_table import UnitTable, read_unit_table
from serving.store.usage import add_usage

_REQUEST_FIELDS = [f.name for f in fields(RequestRecord)]
_FEEDBACK_COPIED = (
    "score", "label", "comment", "correction", "key_name", "model", "variant", "rollout", "unit", "step", "excluded"
)  # fmt: skip


def _request(row: RequestLogRow) -> RequestRecord:
    return RequestRecord(**{name: getattr(row, name) for name in _REQUEST_FIELDS})


def _feedback(row: FeedbackRow) -> FeedbackRecord:
    return FeedbackRecord(**{f.name: getattr(row, f.name) for f in fields(FeedbackRecord)})


def counted_requests(rollout: str) -> sa.ColumnElement[bool]:
    """The rows a rollout's statistics count: the predicate of the partial index, repeated verbatim
    so the planner can use it."""
    r = RequestLogRow
    return sa.and_(r.rollout == rollout, r.excluded.is_(None), r.unit.is_not(None), r.step.is_not(None))


def counted_feedback(rollout: str, source: str = USER_SOURCE) -> sa.ColumnElement[bool]:
    """Scores of one source (users', or one grader's) that a rollout's statistics count."""
    f = FeedbackRow
    counted = sa.and_(f.rollout == rollout, f.excluded.is_(None), f.unit.is_not(None), f.step.is_not(None))
    return sa.and_(counted, f.source == source)


Rows = tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]  # which request rows, which feedback rows


def unit_queries(rollout: str, ttft_threshold_s: float | None, rows: Rows | None = None) -> tuple[sa.Select, sa.Select]:
    """The two GROUP BYs behind rollout_units (requests, feedback), each an index-only scan of its
    rollout-units index; public so a test and the scale benchmark can EXPLAIN them. `rows`: other
    predicates than the counted live rows (the shadow stage's, serving/store/shadow.py)."""
    counted_rows, counted_scores = rows or (counted_requests(rollout), counted_feedback(rollout))
    r = RequestLogRow
    latency = sa.func.coalesce(r.ttft_s, r.latency_s)
    over = sa.case((latency > ttft_threshold_s, 1), else_=0) if ttft_threshold_s is not None else sa.literal(0)
    requests = (
        sa.select(
            r.variant,
            r.step,
            r.unit,
            sa.func.count().label("n"),
            sa.func.sum(sa.case((r.outcome == "error", 1), else_=0)).label("errors"),
            sa.func.sum(over).label("over"),
        )
        .where(counted_rows)
        .group_by(r.variant, r.step, r.unit)
    )
    f = FeedbackRow
    scores = (
        sa.select(f.variant, f.step, f.unit, sa.func.sum(f.score).label("total"), sa.func.count().label("n"))
        .where(counted_scores)
        .group_by(f.variant, f.step, f.unit)
    )
    return requests, scores


def units_query(rollout: str, ttft_threshold_s: float | None, rows: Rows | None = None) -> sa.Select:
    """Each (variant, step, unit) of the requests' GROUP BY with its feedback's beside it (a LEFT
    JOIN of the two sorted aggregates): rows in UnitStats' field order, sorted (unit_table.py reads
    them). Feedback is on a logged request (it copies the request's variant, step, unit and exclusion), so a cell with
    feedback always has requests."""
    requests, scores = (q.subquery() for q in unit_queries(rollout, ttft_threshold_s, rows))
    same = sa.and_(*(requests.c[k] == scores.c[k] for k in ("variant", "step", "unit")))
    keys = (requests.c.variant, requests.c.step, requests.c.unit)
    return (
        sa.select(
            *keys,
            requests.c.n,
            requests.c.errors,
            requests.c.over,
            sa.func.coalesce(scores.c.total, 0.0),
            sa.func.coalesce(scores.c.n, 0),
        )
        .select_from(requests.outerjoin(scores, same))
        .order_by(*keys)
    )


def moments_query(rollout: str, ttft_threshold_s: float | None) -> sa.Select:
    """StepMoments per (variant, step): the unit cells of units_query summed once more in SQL."""
    cells = units_query(rollout, ttft_threshold_s).order_by(None).subquery()
    n, e, o, total, k = (cells.c[i] for i in range(3, 8))

    def total_of(x: Any) -> Any:
        return sa.cast(sa.func.sum(x), sa.Float)

    return (
        sa.select(
            cells.c.variant,
            cells.c.step,
            sa.func.count(),
            *(total_of(x) for x in (n, n * n, e, e * e, e * n, o, o * o, o * n)),
            sa.func.count(sa.case((k > 0, 1))),
            *(total_of(x) for x in (k, k * k, total, total * total, total * k)),
        )
        .group_by(cells.c.variant, cells.c.step)
        .order_by(cells.c.variant, cells.c.step)
    )


class RequestLog:
    """Mixed into Store (serving/store/store.py), which provides the transactions. The writer's
    methods (write_requests, get_requests, put_feedback, retention) raise SQLAlchemy's own errors:
    the writer counts and survives them; the gateway's reads get serving errors."""

    clock: Any

    def _tx(self, translate: bool = True) -> AbstractContextManager[Session]:  # provided by Store
        raise NotImplementedError

    def write_requests(self, records: list[RequestRecord]) -> None:
        if not records:
            return
        with self._tx(translate=False) as s:
            s.execute(sa.insert(RequestLogRow), [asdict(r) for r in records])
            add_usage(s, records)  # usage_daily, in the same transaction (serving/store/usage.py)

    def get_request(self, response_id: str) -> RequestRecord | None:
        with self._tx() as s:
            row = s.get(RequestLogRow, response_id)
            return _request(row) if row else None

    def get_requests(self, ids: list[str]) -> dict[str, RequestRecord]:
        if not ids:
            return {}
        with self._tx(translate=False) as s:
            rows = s.scalars(sa.select(RequestLogRow).where(RequestLogRow.id.in_(ids)))
            return {r.id: _request(r) for r in rows}

    def requests(
        self, *, rollout: str | None = None, since: float | None = None, limit: int = 10_000
    ) -> list[RequestRecord]:
        """Whole rows, bodies included, oldest first: for exports and captures, never for decisions
        (they read rollout_units)."""
        query = sa.select(RequestLogRow).order_by(RequestLogRow.created_at).limit(limit)
        if rollout is not None:
            query = query.where(RequestLogRow.rollout == rollout)
        if since is not None:
            query = query.where(RequestLogRow.created_at >= since)
        with self._tx() as s:
            return [_request(r) for r in s.scalars(query)]

    def rollout_units(self, rollout: str, *, ttft_threshold_s: float | None) -> UnitTable:
        """Per (variant, step, unit) aggregates of a rollout's counted requests and their feedback,
        computed in SQL on indexed columns (never body columns), as columns (unit_table.py). Rows
        with `excluded` set, or with no unit or step (logged before units existed), are left out."""
        with self._tx() as s:
            return read_unit_table(s, units_query(rollout, ttft_threshold_s))

    def control_ttft_sample(self, rollout: str, variant: str, n: int) -> list[tuple[str, int, float]]:
        """(unit, step, TTFT or latency) of a variant's first n counted requests in a rollout, oldest
        first: the sample a rollout's TTFT threshold is frozen from (bounded by n; indexed)."""
        r = RequestLogRow
        query = (
            sa.select(r.unit, r.step, sa.func.coalesce(r.ttft_s, r.latency_s))
            .where(counted_requests(rollout), r.variant == variant)
            .order_by(r.created_at, r.id)
            .limit(n)
        )
        with self._tx() as s:
            return [(str(u), int(st or 0), float(t)) for u, st, t in s.execute(query)]

    def rollout_moments(self, rollout: str, *, ttft_threshold_s: float | None) -> list[StepMoments]:
        """Per (variant, step) sums over units (StepMoments) of the same cells rollout_units returns:
        what a per-unit (cluster-robust) test needs, in a handful of rows whatever the number of
        users -- the scale path (benchmarks/store_scale.py)."""
        with self._tx() as s:
            rows = s.execute(moments_query(rollout, ttft_threshold_s)).all()
        out = []
        for v, st, units, *sums in rows:
            values = [float(x or 0.0) for x in sums]
            values[8] = int(values[8])  # rated_units, a count among the sums
            out.append(StepMoments(v, st, int(units), *values))  # type: ignore[arg-type]
        return out

    def put_feedback(self, records: list[FeedbackRecord]) -> None:
        """Upsert by (response id, source): a repeat replaces the earlier score (created_at is kept)."""
        if not records:
            return
        now = self.clock()
        with self._tx(translate=False) as s:
            ids = sorted({f.response_id for f in records})
            query = sa.select(FeedbackRow).where(FeedbackRow.response_id.in_(ids))
            existing = {(r.response_id, r.source): r for r in s.scalars(query)}
            for record in records:
                row = existing.get((record.response_id, record.source))
                if row is None:
                    row = FeedbackRow(response_id=record.response_id, source=record.source, created_at=now)
                    s.add(row)
                    existing[record.response_id, record.source] = row
                for key in _FEEDBACK_COPIED:
                    setattr(row, key, getattr(record, key))
                row.updated_at = now

    def get_feedback(self, response_id: str, source: str = USER_SOURCE) -> FeedbackRecord | None:
        with self._tx() as s:
            row = s.get(FeedbackRow, (response_id, source))
            return _feedback(row) if row else None

    def feedback(
        self, *, rollout: str | None = None, since: float | None = None, source: str | None = USER_SOURCE
    ) -> list[FeedbackRecord]:
        """Scores of one source (None: every source), oldest first."""
        query = sa.select(FeedbackRow).order_by(FeedbackRow.created_at)
        if source is not None:
            query = query.where(FeedbackRow.source == source)
        if rollout is not None:
            query = query.where(FeedbackRow.rollout == rollout)
        if since is not None:
            query = query.where(FeedbackRow.updated_at >= since)
        with self._tx() as s:
            return [_feedback(r) for r in s.scalars(query)]

    # --- retention -------------------------------------------------------------------------------

    def erase_bodies(self, older_than: float, *, batch_size: int = 5_000, max_batches: int = 20) -> int:
        """Retention: drop captured bodies of requests logged before `older_than`, and the users'
        corrections given before it (their words, like a body), `batch_size` rows per transaction, at
        most `max_batches` per table and call (the writer calls again later); returns how many rows
        were erased. Each row is erased once: an erased one matches no longer. (Rows written before
        uncaptured bodies were SQL NULL hold JSON 'null', which IS NOT NULL matches: the first passes
        after an upgrade rewrite those once each, in these bounded batches.)"""
        r, f = RequestLogRow, FeedbackRow
        bodies = (r, r.id, sa.and_(r.created_at < older_than, r.request_body.is_not(None)))
        corrections = (f, f.response_id, sa.and_(f.created_at < older_than, f.correction.is_not(None)))
        erased = 0
        for (table, key, where), values in (
            (bodies, {"request_body": None, "response_text": None}),
            (corrections, {"correction": None}),
        ):
            for _ in range(max_batches):
                with self._tx(translate=False) as s:
                    ids = sa.select(key).where(where).limit(batch_size).scalar_subquery()
                    stmt = sa.update(table).where(key.in_(ids), where).values(**values)
                    n = int(s.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
                erased += n
                if n < batch_size:
                    break
        return erased

    def delete_old_requests(self, older_than: float, *, batch_size: int = 5_000, max_batches: int = 20) -> int:
        """Retention (store.request_log_retention_s): delete request-log rows and feedback logged
        before `older_than`, `batch_size` rows per transaction (short locks, bounded WAL), at most
        `max_batches` per call (the writer calls again later); returns how many rows went.

        Rows of an active (running or paused) rollout are kept whatever their age: its statistics
        cover every step since it started, so deleting any of them would change a decision under
        way. They become deletable once the rollout is promoted or rolled back."""
        deleted = 0
        for table, created, key in (
            (RequestLogRow, RequestLogRow.created_at, RequestLogRow.id),
            (FeedbackRow, FeedbackRow.created_at, FeedbackRow.response_id),
        ):
            active = sa.select(RolloutRow.name).where(RolloutRow.state.in_(ACTIVE_ROLLOUT_STATES))
            old = sa.and_(created < older_than, sa.or_(table.rollout.is_(None), table.rollout.not_in(active)))
            for _ in range(max_batches):
                with self._tx(translate=False) as s:
                    ids = sa.select(key).where(old).limit(batch_size).scalar_subquery()
                    n = int(s.execute(sa.delete(table).where(key.in_(ids))).rowcount or 0)  # type: ignore[attr-defined]
                deleted += n
                if n < batch_size:
                    break
        return deleted
