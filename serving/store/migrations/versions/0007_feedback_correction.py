"""feedback.correction: what the user says the answer should have been (POST /v1/feedback
`correction`); exported as a preference pair and a desirable row beside the rated answer
(serving/rollouts/export.py), erased with the captured bodies (store.body_retention_s).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("correction", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("correction")
