"""The `loraplane loop` iterations' table (loop_iterations): what loraplane/loop/ records after each
stage so a crashed iteration resumes where it stopped. Mixed into Store."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from serving.errors import NotFound
from serving.store.models import LoopIterationRow

LOOP_STAGES = ("export", "train", "gate", "rollout", "done", "stopped")
LOOP_OPEN_STAGES = ("export", "train", "gate", "rollout")  # an iteration in one of these resumes


@dataclass(frozen=True)
class LoopIteration:
    id: int
    adapter: str
    stage: str  # LOOP_STAGES
    started_at: float
    updated_at: float
    finished_at: float | None = None
    stable: str | None = None
    version: str | None = None
    method: str | None = None
    rollout: str | None = None
    outcome: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.stage in LOOP_OPEN_STAGES


def _iteration(row: LoopIterationRow) -> LoopIteration:
    return LoopIteration(**{f.name: getattr(row, f.name) for f in fields(LoopIteration)})


class LoopLog:
    """Mixed into Store: loop iterations (one writer per adapter: the loop's own process)."""

    clock: Any  # provided by Store

    def _tx(self, translate: bool = True) -> AbstractContextManager[Session]:  # provided by Store
        raise NotImplementedError

    def open_iteration(self, adapter: str) -> LoopIteration | None:
        """The adapter's newest iteration that has not finished (a crashed one), or None."""
        r = LoopIterationRow
        query = sa.select(r).where(r.adapter == adapter, r.stage.in_(LOOP_OPEN_STAGES)).order_by(r.id.desc())
        with self._tx() as s:
            row = s.scalars(query.limit(1)).first()
            return None if row is None else _iteration(row)

    def start_iteration(self, adapter: str, **values: Any) -> LoopIteration:
        now = self.clock()
        with self._tx() as s:
            row = LoopIterationRow(
                adapter=adapter, stage="export", started_at=now, updated_at=now, details={}, **values
            )
            s.add(row)
            s.flush()
            return _iteration(row)

    def update_iteration(self, iteration_id: int, **values: Any) -> LoopIteration:
        """Write the given fields (stage, version, details, ...) of one iteration."""
        bad = set(values) - {f.name for f in fields(LoopIteration)} | ({"id", "adapter"} & set(values))
        if bad:
            raise ValueError(f"loop iteration fields {sorted(bad)} cannot be written")
        with self._tx() as s:
            row = s.get(LoopIterationRow, iteration_id)
            if row is None:
                raise NotFound(f"loop iteration {iteration_id} does not exist")
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = self.clock()
            if values.get("stage") in ("done", "stopped"):
                row.finished_at = row.updated_at
            s.flush()
            return _iteration(row)

    def loop_iterations(self, adapter: str | None = None, limit: int = 100) -> list[LoopIteration]:
        """Newest first."""
        r = LoopIterationRow
        query = sa.select(r).order_by(r.id.desc()).limit(limit)
        if adapter is not None:
            query = query.where(r.adapter == adapter)
        with self._tx() as s:
            return [_iteration(row) for row in s.scalars(query)]
