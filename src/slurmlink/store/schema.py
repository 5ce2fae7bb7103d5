"""Tables of the object store, as the code uses them (their layout is made by ``migrations/objects``).

The layout follows kine: one row per live object, one row per change in an append-only event log
(compacted), and a single-row revision counter. Taking the counter row lock in every write
transaction serialises writers, so revisions commit in order and watchers never see gaps.
"""

from __future__ import annotations

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
