"""The control-plane tables (SQLAlchemy 2 declarative). The schema itself is made by the Alembic
migrations in serving/store/migrations/; a test checks that they agree with these models.

Times are UTC POSIX seconds (float): the same on SQLite and PostgreSQL, easy to compare.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# The rows a rollout's statistics count (serving/store/logs.py counted_requests): the two
# rollout-units indexes hold only these, so excluded and pre-0002 rows cost nothing to skip.
COUNTED = "excluded IS NULL AND unit IS NOT NULL AND step IS NOT NULL"


class ControlVersion(Base):
    """One row (id 1) whose `version` goes up on every control change (experiment, stable pointer,
    rollout): replicas poll this one number and reload only when it moved."""

    __tablename__ = "control_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class ExperimentRow(Base):
    """A public model name split across adapter versions by weight."""

    __tablename__ = "experiments"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    variants: Mapped[dict[str, int]] = mapped_column(JSON, nullable=False)  # "adapter@vN" -> weight
    capture: Mapped[str] = mapped_column(String(16), nullable=False, default="none")  # none | bodies
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class StableRow(Base):
    """The version a bare adapter name resolves to."""

    __tablename__ = "stable_versions"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(16), nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)


class RolloutRow(Base):
    """A progressive rollout of `candidate` against `control` for the adapter name `adapter`.

    `weights` ("adapter@vN" -> weight) is what the gateway splits `adapter`'s traffic by while the
    state is "running" or "paused"; `config` holds the rollout's settings (steps, guards, alpha,
    min samples, interval, capture) as JSON so new settings need no migration.
    """

    __tablename__ = "rollouts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    candidate: Mapped[str] = mapped_column(String(80), nullable=False)  # adapter@vN
    control: Mapped[str] = mapped_column(String(80), nullable=False)  # adapter@vM
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # running|paused|promoted|rolled_back
    step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # index into config["steps"]
    weights: Mapped[dict[str, int]] = mapped_column(JSON, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    evaluated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Goes up by one on every change: a decision is written only if the revision it read is still
    # the row's (compare-and-set), so two deciders can never both act on one state.
    revision: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class RequestLogRow(Base):
    """One completion as the client saw it, keyed by the response `id` the client received."""

    __tablename__ = "request_log"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    route: Mapped[str] = mapped_column(String(16), nullable=False)
    model: Mapped[str] = mapped_column(String(80), nullable=False)  # what the client asked for
    experiment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rollout: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variant: Mapped[str] = mapped_column(String(80), nullable=False)  # adapter@vN or "none" (base)
    key_name: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # streams only
    latency_s: Mapped[float] = mapped_column(Float, nullable=False)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Only with capture: bodies. None is SQL NULL, not JSON 'null' (which `IS NOT NULL` matches: the
    # retention pass rewrote every old uncaptured row again on each pass, and exports paged through them).
    request_body: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    response_text: Mapped[str | None] = mapped_column(Text, nullable=True)  # only with capture: bodies
    # Rollout statistics (records.RequestRecord says what each holds).
    unit: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False, default="ok")
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    excluded: Mapped[str | None] = mapped_column(String(16), nullable=True)
    mirror_of: Mapped[str | None] = mapped_column(String(128), nullable=True)  # shadow: the live row's id

    __table_args__ = (
        Index("ix_request_log_rollout_created", "rollout", "created_at"),
        Index("ix_request_log_created", "created_at"),
        # Covering (PostgreSQL INCLUDE): rollout_units is an index-only scan, no heap or body reads.
        Index(
            "ix_request_log_rollout_units",
            "rollout",
            "variant",
            "step",
            "unit",
            postgresql_include=["outcome", "ttft_s", "latency_s"],
            postgresql_where=text(COUNTED),
            sqlite_where=text(COUNTED),
        ),
    )


class FeedbackRow(Base):
    """The score a caller (source "user") or a grader (source "grader:NAME") gave one response: one
    per source, a repeat replaces it. model/variant/rollout are copied from the request log so
    per-variant numbers need no join."""

    __tablename__ = "feedback"
    response_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(80), primary_key=True, default="user", server_default="user")
    score: Mapped[float] = mapped_column(Float, nullable=False)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the user says the answer should have been (source "user" only): training data, erased with
    # the captured bodies (store.body_retention_s).
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_name: Mapped[str] = mapped_column(String(128), nullable=False)  # who rated
    model: Mapped[str] = mapped_column(String(80), nullable=False)
    variant: Mapped[str] = mapped_column(String(80), nullable=False)
    rollout: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    unit: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    excluded: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (
        Index(
            "ix_feedback_rollout_units",
            "rollout",
            "source",
            "variant",
            "step",
            "unit",
            postgresql_include=["score"],
            postgresql_where=text(COUNTED),
            sqlite_where=text(COUNTED),
        ),
        Index("ix_feedback_created", "created_at"),  # retention
    )


class AuditRow(Base):
    """Every change to the control plane: who, when, what, why, and the numbers behind it."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)  # key name, "evaluator", "gateway"
    action: Mapped[str] = mapped_column(String(64), nullable=False)  # e.g. stable.set, experiment.put
    subject: Mapped[str] = mapped_column(String(80), nullable=False, index=True)  # adapter/experiment/rollout
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    numbers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class LeaseRow(Base):
    """A named lease (e.g. "evaluator"): one holder at a time until `expires_at`."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[float] = mapped_column(Float, nullable=False)
    acquired_at: Mapped[float] = mapped_column(Float, nullable=False)
    # Fencing token: goes up each time the lease changes holder; a decision carries the token it
    # was made under and is refused once the lease has moved on.
    token: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class UsageRow(Base):
    """Tokens in and out per API key, model and UTC day: the request log in aggregate, upserted in
    the writer's batch transaction (serving/store/usage.py), so it outlives request-log retention.
    `model` is the request log's (what the client asked for: base, adapter or experiment name)."""

    __tablename__ = "usage_daily"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD (UTC)
    key_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(80), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)

    __table_args__ = (Index("ix_usage_daily_key_day", "key_name", "day"),)


class LoopIterationRow(Base):
    """One `loraplane loop` iteration of an adapter and the stage it reached (loraplane/loop/):
    export -> train -> gate -> rollout -> done, or stopped with its reason. `details` holds each
    stage's numbers (export counts, train attempts, gate scores, rollout report) as JSON."""

    __tablename__ = "loop_iterations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    stage: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stable: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the version trained from
    version: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the version this iteration makes
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)  # kto | dpo | sft
    rollout: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)  # promoted | rolled_back | stopped
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
