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


def upgrade() -> None:
    with op.batch_alter_table("request_log") as t:
        t.add_column(sa.Column("unit", sa.String(32), nullable=True))
        t.add_column(sa.Column("step", sa.Integer(), nullable=True))
        t.add_column(sa.Column("outcome", sa.String(16), nullable=False, server_default="ok"))
        t.add_column(sa.Column("error_kind", sa.String(32), nullable=True))
        t.add_column(sa.Column("excluded", sa.String(16), nullable=True))
    # Rows logged before this revision: a status of 500 or more was the variant's error.
    op.execute("UPDATE request_log SET outcome = 'error' WHERE status >= 500")
    op.create_index("ix_request_log_rollout_units", "request_log", ["rollout", "variant", "step", "unit"])
    with op.batch_alter_table("feedback") as t:
        t.add_column(sa.Column("unit", sa.String(32), nullable=True))
        t.add_column(sa.Column("step", sa.Integer(), nullable=True))
        t.add_column(sa.Column("excluded", sa.String(16), nullable=True))
    with op.batch_alter_table("rollouts") as t:
        t.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("leases") as t:
        t.add_column(sa.Column("token", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("leases") as t:
        t.drop_column("token")
    with op.batch_alter_table("rollouts") as t:
        t.drop_column("revision")
    with op.batch_alter_table("feedback") as t:
        for column in ("excluded", "step", "unit"):
            t.drop_column(column)
    op.drop_index("ix_request_log_rollout_units", "request_log")
    with op.batch_alter_table("request_log") as t:
        for column in ("excluded", "error_kind", "outcome", "step", "unit"):
            t.drop_column(column)
