"""The shadow stage's reads: a rollout's per-unit aggregates at the shadow step, where the candidate's
rows are the mirrored answers (excluded="shadow") and the control's are its live answers.

Live statistics (logs.py rollout_units) never see a shadow row: they count only rows whose
`excluded` is NULL. These queries are the one place shadow rows are counted, and only at the
shadow step, so the two never mix.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import sqlalchemy as sa
from sqlalchemy.orm import Session

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


def shadow_units_query(rollout: str, ttft_threshold_s: float | None) -> sa.Select:
    """Per-unit rows of the shadow step (logs.units_query over the shadow rows), users' feedback
    beside its requests (graders' scores are read per grader: shadow_scores)."""
    f = FeedbackRow
    rows = (_shadow_rows(RequestLogRow, rollout), sa.and_(_shadow_rows(f, rollout), f.source == USER_SOURCE))
    return units_query(rollout, ttft_threshold_s, rows)


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

    def shadow_scores(self, rollout: str, source: str) -> UnitTable:
        """One source's scores (a grader's) per (variant, step, unit) at the shadow step: the
        candidate's mirrored answers and the control's live ones, like ScoreReads.rollout_scores."""
        f = FeedbackRow
        return self.unit_scores(sa.and_(_shadow_rows(f, rollout), f.source == source))
