"""Alembic environment: syncd runs migrations in-process on a connection it hands in."""

from __future__ import annotations

from alembic import context

from syncd.store import schema

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - syncd always hands in a connection
    raise RuntimeError("syncd migrations run through 'syncd db upgrade', not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=schema.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
