"""Scores have a source: "user" (POST /v1/feedback) or "grader:NAME" (serving/graders/). A response
keeps one score per source (the primary key becomes response_id + source), and the rollout-units
index leads with (rollout, source) so the user-feedback guard and each grader guard read only their
own rows. Rows written before this revision are users'.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# The same text as serving/store/models.py COUNTED (a migration keeps its own copy).
COUNTED = "excluded IS NULL AND unit IS NOT NULL AND step IS NOT NULL"


def _units_index(columns: list[str]) -> None:
    op.create_index(
        "ix_feedback_rollout_units",
        "feedback",
        columns,
        postgresql_include=["score"],
        postgresql_where=sa.text(COUNTED),
        sqlite_where=sa.text(COUNTED),
    )


def upgrade() -> None:
    op.drop_index("ix_feedback_rollout_units", "feedback")
    source = sa.Column("source", sa.String(80), nullable=False, server_default="user")
    if op.get_bind().dialect.name == "sqlite":  # the table is copied with the new key
        with warnings.catch_warnings():  # SQLAlchemy notes that the copy's key differs: that is the point
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_feedback' specifies columns")
            with op.batch_alter_table("feedback", recreate="always") as t:
                t.add_column(source)
                t.create_primary_key("pk_feedback", ["response_id", "source"])
    else:
        op.add_column("feedback", source)
        op.drop_constraint("feedback_pkey", "feedback", type_="primary")
        op.create_primary_key("feedback_pkey", "feedback", ["response_id", "source"])
    _units_index(["rollout", "source", "variant", "step", "unit"])


def downgrade() -> None:
    op.drop_index("ix_feedback_rollout_units", "feedback")
    op.execute("DELETE FROM feedback WHERE source <> 'user'")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("feedback", recreate="always") as t:
            t.drop_column("source")
    else:
        op.drop_constraint("feedback_pkey", "feedback", type_="primary")
        op.drop_column("feedback", "source")
        op.create_primary_key("feedback_pkey", "feedback", ["response_id"])
    _units_index(["rollout", "variant", "step", "unit"])
