"""The control-plane store: one small synchronous interface over SQLAlchemy.

Every public method is one transaction. Calls block on the database, so code on the event loop
runs them in a thread (`await asyncio.to_thread(store.put_experiment, ...)`); the request log
and feedback go through serving/store/writer.py instead, which batches them in its own thread.

One decision at a time. Every change to experiments, stable pointers and rollouts runs in a
transaction whose first statement bumps the one control-version row, so control writes are
serialized by that row's lock (PostgreSQL) or the database write lock (SQLite), and every check a
write makes (the rollout's revision, the lease's fencing token, no active rollout on an adapter
whose stable pointer moves) holds until it commits. A rollout change is a compare-and-set: the
caller passes the revision it read (`expect_revision`) and the write is refused with Conflict when
the row has moved on (its revision goes up by one on every write). A decision of the evaluator also
carries the Lease it was made under (`fence=`): refused when the lease lapsed or changed holder.
Lease times are the database's clock (PostgreSQL clock_timestamp(), SQLite julianday('now')), never
a replica's, so a replica whose clock runs ahead cannot take a lease another replica holds.

Rolling back a promoted rollout restores the control as the stable version -- provided the stable
pointer still names the candidate and no other rollout of the adapter is active; otherwise it is
refused with a Conflict that says which. Moving a stable pointer by hand (`adapters promote`,
set_stable) while the adapter has an active rollout is refused with a Conflict naming the rollout.

Database failures on the paths the gateway calls come out as serving.errors types: StoreUnavailable
(503) naming the database without its password, Conflict (409) for a unique-key clash, BadRequest
for a value the column cannot hold. The writer's own methods (write_requests, put_feedback,
get_requests, retention) raise SQLAlchemy's errors, which the writer counts and survives.
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
from serving.errors import BadRequest, Conflict, NotFound, ServingError, StoreUnavailable
from serving.store.connect import check_reachable, create_db_engine, migrate, store_url
from serving.store.logs import RequestLog
from serving.store.loop import LoopLog
from serving.store.models import AuditRow, ControlVersion, ExperimentRow, LeaseRow, RolloutRow, StableRow
from serving.store.records import (
    ACTIVE_ROLLOUT_STATES,
    AuditRecord,
    ControlSnapshot,
    ExperimentRecord,
    Lease,
    RolloutRecord,
)
from serving.store.scores import ScoreReads
from serving.store.shadow import ShadowLog
from serving.store.usage import UsageLog

REVISION_CHANGED = "revision_changed"  # Conflict codes: the compare-and-set found a newer revision,
LEASE_LOST = "lease_lost"  # or the fencing lease lapsed / moved on
_ROLLOUT_FIELDS = {f.name for f in fields(RolloutRecord)}
_CHANGEABLE = _ROLLOUT_FIELDS - {"name", "adapter", "created_at", "revision"}
# SQL for "now" on the database's own clock, in POSIX seconds.
_DB_NOW = {
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
}


def _experiment(row: ExperimentRow) -> ExperimentRecord:
    return ExperimentRecord(row.name, dict(row.variants), row.capture, row.updated_at)


def _rollout(row: RolloutRow) -> RolloutRecord:
    return RolloutRecord(**{name: getattr(row, name) for name in _ROLLOUT_FIELDS})


class Store(RequestLog, UsageLog, ScoreReads, ShadowLog, LoopLog):
    def __init__(self, engine: Engine, clock: Any = time.time):
        self.engine = engine
        self.clock = clock  # audit and row timestamps; leases use the database's clock

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
    def _tx(self, translate: bool = True) -> Iterator[Session]:
        """One transaction; with `translate`, a database failure comes out as a serving error."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except sa.exc.SQLAlchemyError as exc:
            if not translate:
                raise
            raise self._translated(exc) from exc

    def _translated(self, exc: sa.exc.SQLAlchemyError) -> ServingError:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:300]
        if isinstance(exc, sa.exc.IntegrityError):
            return Conflict(f"the change clashes with what the control-plane database holds ({reason}); read and retry")
        if isinstance(exc, sa.exc.DataError):
            return BadRequest(f"a value does not fit the control-plane database ({reason}); shorten or fix it")
        return StoreUnavailable(
            f"the control-plane database {self.url} failed ({type(exc).__name__}: {reason}); retry once it is reachable"
        )

    @contextmanager
    def _control_tx(self) -> Iterator[Session]:
        """A control-plane write: its first statement bumps the control version, which takes the
        write lock every other control write waits on (see the module docstring)."""
        with self._tx() as s:
            s.execute(
                sa.update(ControlVersion).where(ControlVersion.id == 1).values(version=ControlVersion.version + 1)
            )
            yield s

    def _audit(self, session: Session, actor: str, action: str, subject: str, reason: str | None, numbers: Any) -> None:
        session.add(
            AuditRow(at=self.clock(), actor=actor, action=action, subject=subject, reason=reason, numbers=numbers)
        )

    def _db_now(self, session: Session) -> float:
        return float(session.execute(sa.text(_DB_NOW[self.engine.dialect.name])).scalar_one())

    # --- what the request path reads (polled) -------------------------------------------------

    def version(self) -> int:
        with self._tx() as s:
            return int(s.execute(sa.select(ControlVersion.version).where(ControlVersion.id == 1)).scalar_one())

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
        with self._control_tx() as s:
            row = s.get(ExperimentRow, name)
            before = dict(row.variants) if row else None
            if row is None:
                row = ExperimentRow(name=name)
                s.add(row)
            row.variants, row.capture, row.updated_at = dict(variants), capture, self.clock()
            self._audit(s, actor, "experiment.put", name, reason, {"before": before, "after": dict(variants)})
            return _experiment(row)

    def seed_experiment(self, name: str, variants: dict[str, int], *, capture: str = "none") -> bool:
        """Insert a config-file experiment unless the store already has one by that name."""
        with self._tx() as s:
            if s.get(ExperimentRow, name) is not None:
                return False
        with self._control_tx() as s:
            if s.get(ExperimentRow, name) is not None:  # another replica seeded it meanwhile
                return False
            s.add(ExperimentRow(name=name, variants=dict(variants), capture=capture, updated_at=self.clock()))
            self._audit(s, "config", "experiment.seed", name, "from the serving config", {"after": variants})
            return True

    def delete_experiment(self, name: str, *, actor: str, reason: str | None = None) -> None:
        with self._control_tx() as s:
            row = s.get(ExperimentRow, name)
            if row is None:
                raise NotFound(f"experiment {name!r} does not exist", param="name")
            s.delete(row)
            self._audit(s, actor, "experiment.delete", name, reason, {"before": dict(row.variants)})

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
        with self._control_tx() as s:
            row = s.get(StableRow, name)
            if row is not None:  # another replica recorded it meanwhile
                return row.version
            s.add(StableRow(name=name, version=version, updated_at=self.clock()))
            self._audit(s, actor, "stable.init", name, "first published version", {"version": version})
            return version

    def set_stable(
        self, name: str, version: str, *, actor: str, reason: str | None = None, numbers: dict | None = None
    ) -> str | None:
        """Move the stable pointer by hand (audited); returns the previous version. Conflict naming
        the rollout while the adapter has an active one: the rollout owns the pointer until it ends."""
        with self._control_tx() as s:
            active = self._active_rollout(s, name)
            if active is not None:
                raise Conflict(
                    f"adapter {name!r} is in rollout {active.name!r} ({active.state}); "
                    f"use `loraplane rollout promote {active.name}` or roll it back first",
                    param="model",
                )
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
        self._audit(s, actor, "stable.set", name, reason, {"from": previous, "to": version, **(numbers or {})})
        return previous

    def _active_rollout(self, s: Session, adapter: str, other_than: str | None = None) -> RolloutRow | None:
        query = sa.select(RolloutRow).where(RolloutRow.adapter == adapter, RolloutRow.state.in_(ACTIVE_ROLLOUT_STATES))
        if other_than is not None:
            query = query.where(RolloutRow.name != other_than)
        return s.scalars(query).first()

    # --- rollouts ------------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRecord, *, actor: str, reason: str | None = None) -> RolloutRecord:
        """Conflict when the name exists or the adapter already has a running/paused rollout."""
        now = self.clock()
        with self._control_tx() as s:
            if s.get(RolloutRow, rollout.name) is not None:
                raise Conflict(f"a rollout named {rollout.name!r} already exists; pick another name", param="name")
            active = self._active_rollout(s, rollout.adapter)
            if active is not None:
                raise Conflict(
                    f"adapter {rollout.adapter!r} already has rollout {active.name!r} ({active.state}); "
                    "promote or roll it back first",
                    param="name",
                )
            values = {**asdict(rollout), "created_at": now, "updated_at": now, "revision": 0}
            row = RolloutRow(**values)
            s.add(row)
            self._audit(s, actor, "rollout.start", rollout.name, reason, {"weights": rollout.weights, **rollout.config})
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
        expect_revision: int,
        actor: str,
        action: str,
        reason: str | None = None,
        numbers: dict | None = None,
        set_stable: str | None = None,
        stable_from: str | None = None,
        fence: Lease | None = None,
        **changes: Any,
    ) -> RolloutRecord:
        """Compare-and-set a rollout: write `changes` (state, step, weights, config, evaluated_at)
        only if its revision is still `expect_revision` (and, with `fence`, that lease is still
        held under its token), audited as `action` with `numbers`. `set_stable` moves the adapter's
        stable pointer in the same transaction; `stable_from` requires the pointer to name that
        version first. Conflict (nothing written) when any check fails; the message says which."""
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValueError(f"update_rollout: unknown fields {sorted(unknown)}")
        with self._control_tx() as s:
            if fence is not None:
                self._check_fence(s, fence)
            row = s.get(RolloutRow, name, populate_existing=True)
            if row is None:
                raise NotFound(f"rollout {name!r} does not exist", param="name")
            if row.revision != expect_revision:
                raise Conflict(
                    f"rollout {name!r} changed since it was read (revision {expect_revision}, now "
                    f"{row.revision}: {row.state}, {row.reason!r}); {action} not written -- read it again",
                    param="name",
                    code=REVISION_CHANGED,
                )
            if set_stable is not None:
                self._check_stable_move(s, row, stable_from)
            for key, value in changes.items():
                setattr(row, key, value)
            if reason is not None:  # the rollout's own `reason` is the latest change's
                row.reason = reason
            row.updated_at, row.revision = self.clock(), row.revision + 1
            if set_stable is not None:
                self._set_stable(s, row.adapter, set_stable, actor, reason, {"rollout": name})
            self._audit(s, actor, action, name, reason, numbers)
            return _rollout(row)

    def _check_stable_move(self, s: Session, row: RolloutRow, stable_from: str | None) -> None:
        other = self._active_rollout(s, row.adapter, other_than=row.name)
        if other is not None:
            raise Conflict(
                f"adapter {row.adapter!r} is in rollout {other.name!r} ({other.state}); its stable pointer "
                f"stays until that rollout ends",
                param="name",
            )
        if stable_from is not None:
            current = s.get(StableRow, row.adapter)
            if current is None or current.version != stable_from:
                now = current.version if current else None
                raise Conflict(
                    f"adapter {row.adapter!r}'s stable version is {now!r}, not {stable_from!r}, since rollout "
                    f"{row.name!r} ended; it was moved on, so {row.name!r} no longer decides it",
                    param="name",
                )

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

    # --- leases (one evaluator across replicas), on the database's clock ---------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take or renew lease `name` for `holder` until (database) now + ttl_s; None while another
        holder's term runs. A new term (another holder, or this one after a lapse) gets a new token."""
        with self._tx() as s:
            now = self._db_now(s)
            row = LeaseRow
            new_term = sa.or_(row.holder != holder, row.expires_at < now)
            taken = s.execute(
                sa.update(row)
                .where(row.name == name, sa.or_(row.holder == holder, row.expires_at < now))
                .values(
                    holder=holder,
                    expires_at=now + ttl_s,
                    token=sa.case((new_term, row.token + 1), else_=row.token),
                    acquired_at=sa.case((new_term, now), else_=row.acquired_at),
                )
            )
            if not taken.rowcount:  # type: ignore[attr-defined]
                try:
                    with s.begin_nested():
                        s.add(LeaseRow(name=name, holder=holder, expires_at=now + ttl_s, acquired_at=now, token=1))
                except sa.exc.IntegrityError:
                    return None
            lease = s.get(LeaseRow, name, populate_existing=True)
            assert lease is not None and lease.holder == holder
            return Lease(name, holder, lease.token, lease.expires_at)

    def _check_fence(self, s: Session, lease: Lease) -> None:
        now = self._db_now(s)
        row = s.get(LeaseRow, lease.name, populate_existing=True, with_for_update=True)
        if row is None or row.holder != lease.holder or row.token != lease.token or row.expires_at < now:
            held = f"{row.holder!r} (token {row.token})" if row is not None else "nobody"
            raise Conflict(
                f"lease {lease.name!r} of {lease.holder!r} (token {lease.token}) lapsed or moved on (now held by "
                f"{held}); a decision made under it is not written",
                code=LEASE_LOST,
            )

    def release_lease(self, name: str, holder: str) -> None:
        """End `holder`'s term now. The row stays (lapsed), so the next term's token is still higher."""
        with self._tx() as s:
            s.execute(
                sa.update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder).values(expires_at=0.0)
            )

    def lease_holder(self, name: str) -> str | None:
        with self._tx() as s:
            row = s.get(LeaseRow, name)
            return row.holder if row and row.expires_at >= self._db_now(s) else None
