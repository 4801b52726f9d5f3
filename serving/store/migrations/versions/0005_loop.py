"""`loraplane loop`: one row per iteration (feedback -> train -> gate -> rollout) and the stage it
reached, so a crashed iteration resumes where it stopped (loraplane/loop/).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loop_iterations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("adapter", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("stable", sa.String(16), nullable=True),
        sa.Column("version", sa.String(16), nullable=True),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("rollout", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_loop_iterations_adapter", "loop_iterations", ["adapter"])


def downgrade() -> None:
    op.drop_index("ix_loop_iterations_adapter", table_name="loop_iterations")
    op.drop_table("loop_iterations")
