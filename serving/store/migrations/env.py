"""Alembic environment: run only programmatically (serving/store/migrate.py hands us a connection)."""

from __future__ import annotations

from alembic import context

from serving.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
