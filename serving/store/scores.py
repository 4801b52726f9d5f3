"""Reads of the Store for grader guards and training exports (mixed into Store like RequestLog).

- rollout_scores(rollout, source): per (variant, step, unit) sum and count of one source's scores
  (a grader's, "grader:NAME") as a UnitTable, from the rollout-units index, which leads with (rollout, source):
  the same cells the user-feedback guard reads, one grader at a time.
- captured_page(...): one page of an adapter's captured answers outside rollouts and experiments,
  ordered by (created_at, id) with a keyset cursor: a page costs at most `limit` rows however long
  the window.
- scores_of(ids, source): the scores one source gave some responses (a page's ids).
- corrections_of(ids): the users' corrections of some responses (POST /v1/feedback `correction`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import sqlalchemy as sa
from sqlalchemy.orm import Session

from serving.store.logs import _request, counted_feedback
from serving.store.models import FeedbackRow, RequestLogRow
from serving.store.records import USER_SOURCE, RequestRecord
from serving.store.unit_table import UnitTable, read_unit_table

MAX_PAGE = 1000  # rows one captured_page returns at most


class ScoreReads:
    def _tx(self, translate: bool = True) -> AbstractContextManager[Session]:  # provided by Store
        raise NotImplementedError

    def rollout_scores(self, rollout: str, source: str) -> UnitTable:
        """One source's scores per (variant, step, unit) of a rollout, as a UnitTable with only
        score_sum / score_n set (requests are the user-feedback query's business)."""
        return self.unit_scores(counted_feedback(rollout, source))

    def unit_scores(self, which: sa.ColumnElement[bool]) -> UnitTable:
        """Scores of the feedback rows `which` selects, summed per (variant, step, unit)
        (rollout_scores; the shadow stage's: store/shadow.py)."""
        f = FeedbackRow
        none = sa.literal(0, sa.BigInteger)  # requests, errors, ttft_over: not this query's
        query = (
            sa.select(f.variant, f.step, f.unit, none, none, none, sa.func.sum(f.score), sa.func.count())
            .where(which)
            .group_by(f.variant, f.step, f.unit)
            .order_by(f.variant, f.step, f.unit)
        )
        with self._tx() as s:
            return read_unit_table(s, query)

    def captured_page(
        self,
        adapter: str,
        *,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int = MAX_PAGE,
    ) -> list[RequestRecord]:
        """Answered (200) requests of `adapter` (one version, or all) with captured bodies, outside
        rollouts and experiments, in [since, until), after the cursor (created_at, id); at most limit."""
        r = RequestLogRow
        prefix = r.variant.startswith(f"{adapter}@", autoescape=True)
        variant = r.variant == f"{adapter}@{version}" if version else prefix
        query = sa.select(r).where(
            variant,
            r.rollout.is_(None),
            r.experiment.is_(None),
            r.status == 200,
            r.request_body.is_not(None),
        )
        if since is not None:
            query = query.where(r.created_at >= since)
        if until is not None:
            query = query.where(r.created_at < until)
        if after is not None:
            query = query.where(sa.or_(r.created_at > after[0], sa.and_(r.created_at == after[0], r.id > after[1])))
        query = query.order_by(r.created_at, r.id).limit(max(1, min(limit, MAX_PAGE)))
        with self._tx() as s:
            return [_request(row) for row in s.scalars(query)]

    def scores_of(self, ids: list[str], source: str) -> dict[str, float]:
        if not ids:
            return {}
        f = FeedbackRow
        query = sa.select(f.response_id, f.score).where(f.response_id.in_(ids), f.source == source)
        with self._tx() as s:
            return {rid: float(score) for rid, score in s.execute(query)}

    def corrections_of(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        f = FeedbackRow
        query = sa.select(f.response_id, f.correction).where(
            f.response_id.in_(ids), f.source == USER_SOURCE, f.correction.is_not(None)
        )
        with self._tx() as s:
            return {rid: str(text) for rid, text in s.execute(query)}
