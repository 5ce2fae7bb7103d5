"""Hot-path statements, compiled once per dialect and run as driver SQL.

Building and compiling SQLAlchemy constructs per call cost more than SQLite's own work; these
statements are fixed, so they are rendered once with named bind parameters.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from slurmlink.store import schema


class Prepared:
    """One statement rendered for a dialect; ``run`` binds values by name."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.constants = {k: v for k, v in compiled.params.items() if v is not None}
        self.order = list(compiled.positiontup or []) if compiled.positional else None
        #: psycopg prepares server-side when asked; sqlite3 caches prepared statements by itself.
        self._driver_options: dict[str, Any] = {"prepare": True} if dialect.name == "postgresql" else {}

    def params(self, values: dict[str, Any]) -> Any:
        merged = {**self.constants, **values}
        return tuple(merged[k] for k in self.order) if self.order is not None else merged

    def run(self, conn: sa.Connection, **values: Any) -> sa.CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.params(values))

    def run_driver(self, driver: Any, **values: Any) -> Any:
        """Run on the DB-API connection directly (psycopg or sqlite3, below SQLAlchemy); a cursor."""
        return driver.execute(self.sql, self.params(values), **self._driver_options)


def _insert_new(dialect: sa.Dialect) -> sa.ClauseElement:
    """INSERT that does nothing (rowcount 0) when the key exists: no error, so no savepoint needed."""
    o, b = schema.objects, sa.bindparam
    values: dict[str, Any] = {
        "resource": b("k_resource"),
        "namespace": b("k_namespace"),
        "name": b("k_name"),
        "revision": b("v_revision"),
        "data": b("v_data"),
    }
    if dialect.name == "postgresql":
        return postgresql.insert(o).values(**values).on_conflict_do_nothing()
    return sqlite.insert(o).values(**values).on_conflict_do_nothing()


def build(dialect: sa.Dialect) -> dict[str, Prepared]:
    o, e, c, b = schema.objects, schema.events, schema.counters, sa.bindparam
    key = (o.c.resource == b("k_resource"), o.c.namespace == b("k_namespace"), o.c.name == b("k_name"))
    statements: dict[str, sa.ClauseElement] = {
        "get": sa.select(o.c.data).where(*key),
        "get_row": sa.select(o.c.revision, o.c.data).where(*key),
        "get_revision": sa.select(o.c.revision).where(*key),
        "bump": c.update().where(c.c.id == 1).values(revision=c.c.revision + 1).returning(c.c.revision),
        "unbump": c.update().where(c.c.id == 1).values(revision=c.c.revision - 1),
        "current": sa.select(c.c.revision),
        "insert": _insert_new(dialect),
        "update": o.update()
        .where(*key, o.c.revision == b("k_expected"))
        .values(revision=b("v_revision"), data=b("v_data")),
        "delete": o.delete().where(*key),
        "event": e.insert().values(
            revision=b("e_revision"),
            type=b("e_type"),
            resource=b("e_resource"),
            namespace=b("e_namespace"),
            name=b("e_name"),
            data=b("e_data"),
        ),
    }
    if dialect.name == "postgresql":  # server-side functions (migration objects_0003)
        k, v = ("k_resource", "k_namespace", "k_name"), ("v_head", "v_tail", "v_origin")
        statements["fn_create"] = sa.select(sa.func.slurmlink_create(*map(b, (*k, *v))))
        statements["fn_update"] = sa.select(sa.func.slurmlink_update(*map(b, (*k, "k_expected", *v))))
        delete_args: list[Any] = [b(name) for name in (*k, "k_expected", "v_origin")]
        statements["fn_delete"] = sa.select(sa.text("*")).select_from(sa.func.slurmlink_delete(*delete_args))
    return {name: Prepared(stmt, dialect) for name, stmt in statements.items()}
