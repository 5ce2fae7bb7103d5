"""Tables of the object store and their versioned migrations.

The layout follows kine: one row per live object, one row per change in an append-only event log
(compacted), and a single-row revision counter. Taking the counter row lock in every write
transaction serialises writers, so revisions commit in order and watchers never see gaps.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("resource", sa.String(200), primary_key=True),
    sa.Column("namespace", sa.String(253), primary_key=True),
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    # Part of the table (created with it): an Index built inside a migration step would attach
    # itself to this shared Table on every run, so the second fresh database opened by one process
    # failed with "index objects_by_namespace already exists".
    sa.Index("objects_by_namespace", "resource", "namespace"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(10), nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("namespace", sa.String(253), nullable=False),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("compacted", sa.BigInteger, nullable=False),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.String(40), nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    for table in (objects, events, counters):
        table.create(conn, checkfirst=True)  # with its indexes
    conn.execute(counters.insert().values(id=1, revision=0, compacted=0))


#: Ordered migrations. Append new steps; never edit a released one.
MIGRATIONS: list[tuple[int, Callable[[sa.Connection], None]]] = [
    (1, _v1),
]

LATEST_VERSION = MIGRATIONS[-1][0]
