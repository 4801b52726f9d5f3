"""request_log.mirror_of: a shadow stage's mirrored row names the live row it repeats, so the shadow
stage compares only requests both versions answered (serving/store/shadow.py).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.add_column(sa.Column("mirror_of", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.drop_column("mirror_of")
