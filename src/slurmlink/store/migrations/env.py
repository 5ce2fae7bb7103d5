"""Alembic environment: always run by ``slurmlink.store.migrations`` on the store's own connection."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=context.config.attributes["version_table"])
with context.begin_transaction():  # the caller's transaction: no-op here, it commits or rolls back
    context.run_migrations()
