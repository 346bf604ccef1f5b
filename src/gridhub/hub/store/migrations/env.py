"""Alembic environment: run the hub revisions on the connection gridhub hands over (never from a URL)."""

from __future__ import annotations

from alembic import context

from gridhub.hub.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("gridhub migrations run through gridhub.hub.store.open_store, which passes the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
