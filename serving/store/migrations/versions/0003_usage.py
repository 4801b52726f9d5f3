"""Usage per API key, model and UTC day (tokens in and out, requests): the request log in
aggregate, kept beyond request-log retention; what `GET /admin/usage` and store-backed budgets read.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("key_name", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(80), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_usage_daily_key_day", "usage_daily", ["key_name", "day"])
    # Rows logged before this revision, so usage starts with what the request log still holds.
    op.execute(
        "INSERT INTO usage_daily (day, key_name, model, requests, prompt_tokens, completion_tokens) "
        f"SELECT {_day_sql()}, key_name, model, count(*), "
        "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
        f"FROM request_log GROUP BY {_day_sql()}, key_name, model"
    )


def _day_sql() -> str:
    """created_at (POSIX seconds) as its UTC day, YYYY-MM-DD, in this database's SQL."""
    if op.get_bind().dialect.name == "postgresql":
        return "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return "strftime('%Y-%m-%d', created_at, 'unixepoch')"


def downgrade() -> None:
    op.drop_index("ix_usage_daily_key_day", "usage_daily")
    op.drop_table("usage_daily")
