"""Initial control-plane schema: experiments, stable versions, rollouts, request log, feedback,
audit log, leases.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.execute("INSERT INTO control_version (id, version) VALUES (1, 0)")
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("capture", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "stable_versions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("adapter", sa.String(64), nullable=False),
        sa.Column("candidate", sa.String(80), nullable=False),
        sa.Column("control", sa.String(80), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_rollouts_adapter", "rollouts", ["adapter"])
    op.create_table(
        "request_log",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("model", sa.String(80), nullable=False),
        sa.Column("experiment", sa.String(64), nullable=True),
        sa.Column("rollout", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(80), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("ttft_s", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("request_body", sa.JSON(), nullable=True),
        sa.Column("response_text", sa.Text(), nullable=True),
    )
    op.create_index("ix_request_log_rollout_created", "request_log", ["rollout", "created_at"])
    op.create_index("ix_request_log_created", "request_log", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("response_id", sa.String(128), primary_key=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("model", sa.String(80), nullable=False),
        sa.Column("variant", sa.String(80), nullable=False),
        sa.Column("rollout", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_feedback_rollout", "feedback", ["rollout"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("numbers", sa.JSON(), nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_subject", "audit_log", ["subject"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "audit_log", "feedback", "request_log", "rollouts", "stable_versions", "experiments"):
        op.drop_table(table)
    op.drop_table("control_version")
