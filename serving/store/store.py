"""The control-plane store: one small synchronous interface over SQLAlchemy.

Every public method is one transaction. Calls block on the database, so code on the event loop
runs them in a thread (`await asyncio.to_thread(store.put_experiment, ...)`); the request log
and feedback go through serving/store/writer.py instead, which batches them in its own thread.
Every change to experiments, stable versions and rollouts bumps one version counter and writes an
audit record in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from serving.config import ServingConfig
from serving.errors import Conflict, NotFound
from serving.store.connect import check_reachable, create_db_engine, migrate, store_url
from serving.store.models import (
    AuditRow,
    ControlVersion,
    ExperimentRow,
    FeedbackRow,
    LeaseRow,
    RequestLogRow,
    RolloutRow,
    StableRow,
)
from serving.store.records import (
    AuditRecord,
    ControlSnapshot,
    ExperimentRecord,
    FeedbackRecord,
    RequestRecord,
    RolloutRecord,
    UnitStats,
)

_ROLLOUT_FIELDS = {f.name for f in fields(RolloutRecord)}
_REQUEST_FIELDS = [f.name for f in fields(RequestRecord)]
_FEEDBACK_COPIED = ("score", "label", "comment", "key_name", "model", "variant", "rollout", "unit", "step", "excluded")


def _experiment(row: ExperimentRow) -> ExperimentRecord:
    return ExperimentRecord(row.name, dict(row.variants), row.capture, row.updated_at)


def _rollout(row: RolloutRow) -> RolloutRecord:
    return RolloutRecord(**{name: getattr(row, name) for name in _ROLLOUT_FIELDS})


def _request(row: RequestLogRow) -> RequestRecord:
    return RequestRecord(**{name: getattr(row, name) for name in _REQUEST_FIELDS})


def _feedback(row: FeedbackRow) -> FeedbackRecord:
    return FeedbackRecord(**{f.name: getattr(row, f.name) for f in fields(FeedbackRecord)})


class Store:
    def __init__(self, engine: Engine, clock: Any = time.time):
        self.engine = engine
        self.clock = clock

    @classmethod
    def open(cls, cfg: ServingConfig, *, run_migrations: bool = True) -> Store:
        """Connect (StoreUnavailable naming the URL without its password) and migrate to head."""
        engine = create_db_engine(store_url(cfg), cfg.store.connect_timeout_s)
        if run_migrations:
            migrate(engine)
        else:
            check_reachable(engine)
        return cls(engine)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _changed(
        self, session: Session, actor: str, action: str, subject: str, reason: str | None, numbers: Any
    ) -> None:
        session.execute(
            sa.update(ControlVersion).where(ControlVersion.id == 1).values(version=ControlVersion.version + 1)
        )
        self._audit(session, actor, action, subject, reason, numbers)

    def _audit(self, session: Session, actor: str, action: str, subject: str, reason: str | None, numbers: Any) -> None:
        session.add(
            AuditRow(at=self.clock(), actor=actor, action=action, subject=subject, reason=reason, numbers=numbers)
        )

    # --- what the request path reads (polled) -------------------------------------------------

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(ControlVersion.version).where(ControlVersion.id == 1)).scalar_one())

    def snapshot(self) -> ControlSnapshot:
        with self._tx() as s:
            version = int(s.execute(sa.select(ControlVersion.version).where(ControlVersion.id == 1)).scalar_one())
            experiments = {r.name: _experiment(r) for r in s.scalars(sa.select(ExperimentRow))}
            stable = {r.name: r.version for r in s.scalars(sa.select(StableRow))}
            rollouts = {r.name: _rollout(r) for r in s.scalars(sa.select(RolloutRow))}
        return ControlSnapshot(version, experiments, stable, rollouts)

    # --- experiments ---------------------------------------------------------------------------

    def put_experiment(
        self, name: str, variants: dict[str, int], *, actor: str, capture: str = "none", reason: str | None = None
    ) -> ExperimentRecord:
        with self._tx() as s:
            row = s.get(ExperimentRow, name)
            before = dict(row.variants) if row else None
            if row is None:
                row = ExperimentRow(name=name)
                s.add(row)
            row.variants, row.capture, row.updated_at = dict(variants), capture, self.clock()
            self._changed(s, actor, "experiment.put", name, reason, {"before": before, "after": dict(variants)})
            return _experiment(row)

    def seed_experiment(self, name: str, variants: dict[str, int], *, capture: str = "none") -> bool:
        """Insert a config-file experiment unless the store already has one by that name."""
        with self._tx() as s:
            if s.get(ExperimentRow, name) is not None:
                return False
            s.add(ExperimentRow(name=name, variants=dict(variants), capture=capture, updated_at=self.clock()))
            self._changed(s, "config", "experiment.seed", name, "from the serving config", {"after": variants})
            return True

    def delete_experiment(self, name: str, *, actor: str, reason: str | None = None) -> None:
        with self._tx() as s:
            row = s.get(ExperimentRow, name)
            if row is None:
                raise NotFound(f"experiment {name!r} does not exist", param="name")
            s.delete(row)
            self._changed(s, actor, "experiment.delete", name, reason, {"before": dict(row.variants)})

    # --- stable versions -----------------------------------------------------------------------

    def stable_versions(self) -> dict[str, str]:
        with self._tx() as s:
            return {r.name: r.version for r in s.scalars(sa.select(StableRow))}

    def ensure_stable(self, name: str, version: str, *, actor: str = "gateway") -> str:
        """The stable version of `name`; when it has none yet, `version` becomes it (audited)."""
        with self._tx() as s:
            row = s.get(StableRow, name)
            if row is not None:
                return row.version
            try:
                with s.begin_nested():  # another replica may insert the same name at the same moment
                    s.add(StableRow(name=name, version=version, updated_at=self.clock()))
            except sa.exc.IntegrityError:
                return s.get(StableRow, name, populate_existing=True).version  # type: ignore[union-attr]
            self._changed(s, actor, "stable.init", name, "first published version", {"version": version})
            return version

    def set_stable(
        self, name: str, version: str, *, actor: str, reason: str | None = None, numbers: dict | None = None
    ) -> str | None:
        """Move the stable pointer (audited); returns the previous version."""
        with self._tx() as s:
            return self._set_stable(s, name, version, actor, reason, numbers)

    def _set_stable(
        self, s: Session, name: str, version: str, actor: str, reason: str | None, numbers: dict | None
    ) -> str | None:
        row = s.get(StableRow, name)
        previous = row.version if row else None
        if row is None:
            s.add(StableRow(name=name, version=version, updated_at=self.clock()))
        else:
            row.version, row.updated_at = version, self.clock()
        self._changed(s, actor, "stable.set", name, reason, {"from": previous, "to": version, **(numbers or {})})
        return previous

    # --- rollouts ------------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRecord, *, actor: str, reason: str | None = None) -> RolloutRecord:
        """Conflict when the name exists or the adapter already has a running/paused rollout."""
        now = self.clock()
        with self._tx() as s:
            if s.get(RolloutRow, rollout.name) is not None:
                raise Conflict(f"a rollout named {rollout.name!r} already exists; pick another name", param="name")
            active = s.scalars(
                sa.select(RolloutRow).where(
                    RolloutRow.adapter == rollout.adapter, RolloutRow.state.in_(("running", "paused"))
                )
            ).first()
            if active is not None:
                raise Conflict(
                    f"adapter {rollout.adapter!r} already has rollout {active.name!r} ({active.state}); "
                    "promote or roll it back first",
                    param="name",
                )
            values = {**asdict(rollout), "created_at": now, "updated_at": now}
            row = RolloutRow(**values)
            s.add(row)
            self._changed(
                s, actor, "rollout.start", rollout.name, reason, {"weights": rollout.weights, **rollout.config}
            )
            return _rollout(row)

    def get_rollout(self, name: str) -> RolloutRecord | None:
        with self._tx() as s:
            row = s.get(RolloutRow, name)
            return _rollout(row) if row else None

    def list_rollouts(self) -> list[RolloutRecord]:
        with self._tx() as s:
            return [_rollout(r) for r in s.scalars(sa.select(RolloutRow).order_by(RolloutRow.created_at))]

    def update_rollout(
        self,
        name: str,
        *,
        actor: str,
        action: str,
        reason: str | None = None,
        numbers: dict | None = None,
        set_stable: str | None = None,
        **changes: Any,
    ) -> RolloutRecord:
        """Change a rollout's fields (state, step, weights, config, reason, evaluated_at), audited as
        `action` with `numbers`; `set_stable` also moves the adapter's stable pointer to that version in
        the same transaction (promotion)."""
        unknown = set(changes) - (_ROLLOUT_FIELDS - {"name", "adapter", "created_at"})
        if unknown:
            raise ValueError(f"update_rollout: unknown fields {sorted(unknown)}")
        with self._tx() as s:
            row = s.get(RolloutRow, name, with_for_update=True)
            if row is None:
                raise NotFound(f"rollout {name!r} does not exist", param="name")
            for key, value in changes.items():
                setattr(row, key, value)
            if reason is not None:  # the rollout's own `reason` is the latest change's
                row.reason = reason
            row.updated_at = self.clock()
            if set_stable is not None:
                self._set_stable(s, row.adapter, set_stable, actor, reason, {"rollout": name})
            self._changed(s, actor, action, name, reason, numbers)
            return _rollout(row)

    # --- request log and feedback (normally through the writer) -----------------------------------

    def write_requests(self, records: list[RequestRecord]) -> None:
        if not records:
            return
        with self._tx() as s:
            s.execute(sa.insert(RequestLogRow), [asdict(r) for r in records])

    def get_request(self, response_id: str) -> RequestRecord | None:
        with self._tx() as s:
            row = s.get(RequestLogRow, response_id)
            return _request(row) if row else None

    def get_requests(self, ids: list[str]) -> dict[str, RequestRecord]:
        if not ids:
            return {}
        with self._tx() as s:
            rows = s.scalars(sa.select(RequestLogRow).where(RequestLogRow.id.in_(ids)))
            return {r.id: _request(r) for r in rows}

    def requests(
        self, *, rollout: str | None = None, since: float | None = None, limit: int = 10_000
    ) -> list[RequestRecord]:
        query = sa.select(RequestLogRow).order_by(RequestLogRow.created_at).limit(limit)
        if rollout is not None:
            query = query.where(RequestLogRow.rollout == rollout)
        if since is not None:
            query = query.where(RequestLogRow.created_at >= since)
        with self._tx() as s:
            return [_request(r) for r in s.scalars(query)]

    def rollout_units(self, rollout: str, *, ttft_threshold_s: float | None) -> list[UnitStats]:
        """Per (variant, step, unit) aggregates of a rollout's counted requests and their feedback,
        computed in SQL on indexed columns (never body columns). Rows with `excluded` set, or with
        no unit or step (logged before units existed), are left out."""
        r = RequestLogRow
        latency = sa.func.coalesce(r.ttft_s, r.latency_s)
        over = sa.case((latency > ttft_threshold_s, 1), else_=0) if ttft_threshold_s is not None else sa.literal(0)
        counted = sa.and_(r.rollout == rollout, r.excluded.is_(None), r.unit.is_not(None), r.step.is_not(None))
        requests = (
            sa.select(
                r.variant,
                r.step,
                r.unit,
                sa.func.count().label("n"),
                sa.func.sum(sa.case((r.outcome == "error", 1), else_=0)).label("errors"),
                sa.func.sum(over).label("over"),
            )
            .where(counted)
            .group_by(r.variant, r.step, r.unit)
        )
        f = FeedbackRow
        scores = (
            sa.select(
                f.variant,
                f.step,
                f.unit,
                sa.func.sum(f.score).label("total"),
                sa.func.count().label("n"),
            )
            .where(f.rollout == rollout, f.excluded.is_(None), f.unit.is_not(None), f.step.is_not(None))
            .group_by(f.variant, f.step, f.unit)
        )
        with self._tx() as s:
            out: dict[tuple[Any, Any, Any], list] = {
                (v, st, u): [int(n), int(e or 0), int(o or 0), 0.0, 0] for v, st, u, n, e, o in s.execute(requests)
            }
            for v, st, u, total, n in s.execute(scores):
                row = out.setdefault((v, st, u), [0, 0, 0, 0.0, 0])
                row[3], row[4] = float(total or 0.0), int(n)
        return [UnitStats(v, st, u, *values) for (v, st, u), values in sorted(out.items())]

    def control_ttft_sample(self, rollout: str, variant: str, n: int) -> list[tuple[str, int, float]]:
        """(unit, step, TTFT or latency) of a variant's first n counted requests in a rollout, oldest
        first: the sample a rollout's TTFT threshold is frozen from (bounded by n; indexed)."""
        r = RequestLogRow
        query = (
            sa.select(r.unit, r.step, sa.func.coalesce(r.ttft_s, r.latency_s))
            .where(r.rollout == rollout, r.variant == variant, r.excluded.is_(None))
            .where(r.unit.is_not(None), r.step.is_not(None))
            .order_by(r.created_at, r.id)
            .limit(n)
        )
        with self._tx() as s:
            return [(str(u), int(st or 0), float(t)) for u, st, t in s.execute(query)]

    def put_feedback(self, records: list[FeedbackRecord]) -> None:
        """Upsert by response id: a repeat replaces the earlier score (created_at is kept)."""
        if not records:
            return
        now = self.clock()
        with self._tx() as s:
            existing = {
                r.response_id: r
                for r in s.scalars(
                    sa.select(FeedbackRow).where(FeedbackRow.response_id.in_([f.response_id for f in records]))
                )
            }
            for record in records:
                row = existing.get(record.response_id)
                if row is None:
                    row = FeedbackRow(response_id=record.response_id, created_at=now)
                    s.add(row)
                    existing[record.response_id] = row
                for key in _FEEDBACK_COPIED:
                    setattr(row, key, getattr(record, key))
                row.updated_at = now

    def get_feedback(self, response_id: str) -> FeedbackRecord | None:
        with self._tx() as s:
            row = s.get(FeedbackRow, response_id)
            return _feedback(row) if row else None

    def feedback(self, *, rollout: str | None = None, since: float | None = None) -> list[FeedbackRecord]:
        query = sa.select(FeedbackRow).order_by(FeedbackRow.created_at)
        if rollout is not None:
            query = query.where(FeedbackRow.rollout == rollout)
        if since is not None:
            query = query.where(FeedbackRow.updated_at >= since)
        with self._tx() as s:
            return [_feedback(r) for r in s.scalars(query)]

    def erase_bodies(self, older_than: float) -> int:
        """Retention: drop captured bodies of requests logged before `older_than`; returns how many."""
        with self._tx() as s:
            result = s.execute(
                sa.update(RequestLogRow)
                .where(RequestLogRow.created_at < older_than, RequestLogRow.request_body.is_not(None))
                .values(request_body=None, response_text=None)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # --- audit log -----------------------------------------------------------------------------

    def audit(
        self, *, actor: str, action: str, subject: str, reason: str | None = None, numbers: dict | None = None
    ) -> None:
        with self._tx() as s:
            self._audit(s, actor, action, subject, reason, numbers)

    def audit_log(self, subject: str | None = None, limit: int = 1000) -> list[AuditRecord]:
        query = sa.select(AuditRow).order_by(AuditRow.id).limit(limit)
        if subject is not None:
            query = query.where(AuditRow.subject == subject)
        with self._tx() as s:
            return [
                AuditRecord(r.id, r.at, r.actor, r.action, r.subject, r.reason, r.numbers) for r in s.scalars(query)
            ]

    # --- leases (one evaluator across replicas) --------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew lease `name` for `holder` until now + ttl_s; False while someone else holds it."""
        now = self.clock()
        with self._tx() as s:
            taken = s.execute(
                sa.update(LeaseRow)
                .where(LeaseRow.name == name, sa.or_(LeaseRow.holder == holder, LeaseRow.expires_at < now))
                .values(holder=holder, expires_at=now + ttl_s)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return True
            try:
                with s.begin_nested():
                    s.add(LeaseRow(name=name, holder=holder, expires_at=now + ttl_s, acquired_at=now))
            except sa.exc.IntegrityError:
                return False
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx() as s:
            s.execute(sa.delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder))

    def lease_holder(self, name: str) -> str | None:
        with self._tx() as s:
            row = s.get(LeaseRow, name)
            return row.holder if row and row.expires_at >= self.clock() else None
