"""Alembic manages the layout from here on; releases that only know ``schema_version`` must refuse it.

Those releases compare ``max(schema_version.version)`` with their own version (1) and stop with "store
schema version 2 is newer than this slurmlink supports (1); upgrade slurmlink" instead of writing.

Revision ID: objects_0002
Revises: objects_0001
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "objects_0002"
down_revision = "objects_0001"
branch_labels = None
depends_on = None

_schema_version = sa.table("schema_version", sa.column("version", sa.Integer), sa.column("applied_at"))


def upgrade() -> None:
    op.bulk_insert(_schema_version, [{"version": 2, "applied_at": dt.datetime.now(dt.UTC).isoformat()}])


def downgrade() -> None:
    op.execute(_schema_version.delete().where(_schema_version.c.version == 2))
