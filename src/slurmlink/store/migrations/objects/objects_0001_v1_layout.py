"""The object store's first layout: objects, event log, revision counter (the pre-Alembic version 1).

Revision ID: objects_0001
Revises: (base of the ``objects`` track)
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "objects_0001"
down_revision = None
branch_labels = ("objects",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("resource", sa.String(200), primary_key=True),
        sa.Column("namespace", sa.String(253), primary_key=True),
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("objects_by_namespace", "objects", ["resource", "namespace"])
    op.create_table(
        "events",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(10), nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    counters = op.create_table(
        "counters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("compacted", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counters, [{"id": 1, "revision": 0, "compacted": 0}])
    # The hand-rolled version table of releases before Alembic; kept so they can refuse newer layouts.
    schema_version = op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied_at", sa.String(40), nullable=False),
    )
    op.bulk_insert(schema_version, [{"version": 1, "applied_at": dt.datetime.now(dt.UTC).isoformat()}])


def downgrade() -> None:
    for table in ("schema_version", "counters", "events", "objects"):
        op.drop_table(table)
