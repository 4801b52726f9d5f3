"""Rollout statistics per unit of assignment: the request log and feedback record the user (unit)
a variant was sticky for, the rollout step whose weights chose it, the request's outcome and why a
row is left out of the statistics. Rollouts get a revision (compare-and-set) and leases a fencing token.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
# The rows rollout statistics count; the same text as serving/store/models.py COUNTED (a migration
# keeps its own copy: it must not change when the models do).
COUNTED = "excluded IS NULL AND unit IS NOT NULL AND step IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("request_log") as t:
        t.add_column(sa.Column("unit", sa.String(32), nullable=True))
        t.add_column(sa.Column("step", sa.Integer(), nullable=True))
        t.add_column(sa.Column("outcome", sa.String(16), nullable=False, server_default="ok"))
        t.add_column(sa.Column("error_kind", sa.String(32), nullable=True))
        t.add_column(sa.Column("excluded", sa.String(16), nullable=True))
    # Rows logged before this revision: a status of 500 or more was the variant's error.
    op.execute("UPDATE request_log SET outcome = 'error' WHERE status >= 500")
    # Partial and covering (models.COUNTED): the evaluator's GROUP BY is an index-only scan.
    op.create_index(
        "ix_request_log_rollout_units",
        "request_log",
        ["rollout", "variant", "step", "unit"],
        postgresql_include=["outcome", "ttft_s", "latency_s"],
        postgresql_where=sa.text(COUNTED),
        sqlite_where=sa.text(COUNTED),
    )
    with op.batch_alter_table("feedback") as t:
        t.add_column(sa.Column("unit", sa.String(32), nullable=True))
        t.add_column(sa.Column("step", sa.Integer(), nullable=True))
        t.add_column(sa.Column("excluded", sa.String(16), nullable=True))
    op.create_index(
        "ix_feedback_rollout_units",
        "feedback",
        ["rollout", "variant", "step", "unit"],
        postgresql_include=["score"],
        postgresql_where=sa.text(COUNTED),
        sqlite_where=sa.text(COUNTED),
    )
    op.create_index("ix_feedback_created", "feedback", ["created_at"])  # request-log retention
    with op.batch_alter_table("rollouts") as t:
        t.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("leases") as t:
        t.add_column(sa.Column("token", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("leases") as t:
        t.drop_column("token")
    with op.batch_alter_table("rollouts") as t:
        t.drop_column("revision")
    op.drop_index("ix_feedback_created", "feedback")
    op.drop_index("ix_feedback_rollout_units", "feedback")
    with op.batch_alter_table("feedback") as t:
        for column in ("excluded", "step", "unit"):
            t.drop_column(column)
    op.drop_index("ix_request_log_rollout_units", "request_log")
    with op.batch_alter_table("request_log") as t:
        for column in ("excluded", "error_kind", "outcome", "step", "unit"):
            t.drop_column(column)
