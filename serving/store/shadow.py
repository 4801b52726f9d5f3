"""The shadow stage's reads: a rollout's per-unit aggregates at the shadow step, where the candidate's
rows are the mirrored answers (excluded="shadow") and the control's are its live answers -- only
pairs: a live row that was mirrored and its mirror (`mirror_of` names the live row), and for a
grader's scores only pairs it scored both answers of, so both sides are over the same requests and
a dropped mirror, a candidate error or an unscored answer cannot bias the comparison.

Live statistics (logs.py rollout_units) never see a shadow row: they count only rows whose
`excluded` is NULL. These queries are the one place shadow rows are counted, and only at the
shadow step, so the two never mix.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from serving.store.logs import units_query
from serving.store.models import FeedbackRow, RequestLogRow
from serving.store.records import USER_SOURCE
from serving.store.unit_table import UnitTable, read_unit_table

SHADOW_STEP = -1  # the step index logged while a rollout is in its shadow stage (before its first step)
SHADOW = "shadow"  # records.EXCLUSIONS: a mirrored answer


def _shadow_rows(table: type[RequestLogRow] | type[FeedbackRow], rollout: str) -> sa.ColumnElement[bool]:
    """Rows of the shadow step: live ones (excluded NULL: the control's answers) and mirrored ones."""
    return sa.and_(
        table.rollout == rollout,
        table.step == SHADOW_STEP,
        table.unit.is_not(None),
        sa.or_(table.excluded.is_(None), table.excluded == SHADOW),
    )


def _mirrors(rollout: str) -> Any:
    """The shadow step's mirrored rows (an alias, for the pairing subqueries)."""
    m = aliased(RequestLogRow)
    return m, sa.and_(m.rollout == rollout, m.step == SHADOW_STEP, m.excluded == SHADOW, m.mirror_of.is_not(None))


def _paired_requests(rollout: str) -> sa.ColumnElement[bool]:
    """Request rows of pairs: a live row that was mirrored, a mirrored row whose live row is logged.
    A live answer never mirrored (the share, a dropped mirror) or a mirror whose live row is not
    logged yet is left out of both sides, so both compare the same requests."""
    r = RequestLogRow
    m, mirrored = _mirrors(rollout)
    live = aliased(RequestLogRow)
    live_rows = sa.select(live.id).where(live.rollout == rollout, live.step == SHADOW_STEP, live.excluded.is_(None))
    return sa.or_(
        sa.and_(r.excluded.is_(None), r.id.in_(sa.select(m.mirror_of).where(mirrored))),
        sa.and_(r.excluded == SHADOW, r.mirror_of.in_(live_rows)),
    )


def _paired_scores(rollout: str, source: str) -> sa.ColumnElement[bool]:
    """Score rows of one source on pairs whose both answers it scored: a candidate error or an
    answer the grader did not score (dropped, timed out) drops its pair from both sides."""
    f = FeedbackRow
    m, mirrored = _mirrors(rollout)
    on_mirror, on_live = aliased(FeedbackRow), aliased(FeedbackRow)
    both = sa.and_(
        mirrored,
        on_mirror.response_id == m.id,
        on_mirror.source == source,
        on_live.response_id == m.mirror_of,
        on_live.source == source,
    )
    return sa.or_(
        sa.and_(f.excluded.is_(None), f.response_id.in_(sa.select(m.mirror_of).where(both))),
        sa.and_(f.excluded == SHADOW, f.response_id.in_(sa.select(m.id).where(both))),
    )


def shadow_units_query(rollout: str, ttft_threshold_s: float | None) -> sa.Select:
    """Per-unit rows of the shadow step over its pairs (logs.units_query), users' feedback beside its
    requests (graders' scores are read per grader: shadow_scores)."""
    f = FeedbackRow
    requests = sa.and_(_shadow_rows(RequestLogRow, rollout), _paired_requests(rollout))
    rows = (requests, sa.and_(_shadow_rows(f, rollout), f.source == USER_SOURCE, _paired_feedback(rollout)))
    return units_query(rollout, ttft_threshold_s, rows)


def _paired_feedback(rollout: str) -> sa.ColumnElement[bool]:
    """Users' feedback on the requests of pairs (users rate live answers; an admin may rate a mirror)."""
    f = FeedbackRow
    m, mirrored = _mirrors(rollout)
    return sa.or_(
        sa.and_(f.excluded.is_(None), f.response_id.in_(sa.select(m.mirror_of).where(mirrored))),
        f.excluded == SHADOW,
    )


class ShadowLog:
    """Mixed into Store: the shadow stage's statistics."""

    def _tx(self, translate: bool = True) -> AbstractContextManager[Session]:  # provided by Store
        raise NotImplementedError

    def shadow_units(self, rollout: str, *, ttft_threshold_s: float | None) -> UnitTable:
        """Per (variant, step, unit) aggregates at the shadow step: the candidate's mirrored answers
        and the control's live ones (and their feedback), as columns (unit_table.py)."""
        with self._tx() as s:
            return read_unit_table(s, shadow_units_query(rollout, ttft_threshold_s))

    def unit_scores(self, which: sa.ColumnElement[bool]) -> UnitTable:  # provided by ScoreReads
        raise NotImplementedError

    def shadow_live_requests(self, rollout: str) -> int:
        """The shadow stage's live requests (the users' answers, paired or not): what a gain shown on
        the pairs must stand for (rollouts/shadow.py)."""
        r = RequestLogRow
        live = sa.and_(_shadow_rows(r, rollout), r.excluded.is_(None))
        with self._tx() as s:
            return int(s.execute(sa.select(sa.func.count()).select_from(r).where(live)).scalar() or 0)

    def shadow_scores(self, rollout: str, source: str) -> UnitTable:
        """One source's scores (a grader's) per (variant, step, unit) at the shadow step, on pairs
        it scored both answers of: the candidate's mirrored answers and the control's live ones."""
        f = FeedbackRow
        return self.unit_scores(sa.and_(_shadow_rows(f, rollout), f.source == source, _paired_scores(rollout, source)))
