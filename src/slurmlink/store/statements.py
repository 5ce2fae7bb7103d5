"""Hot-path statements, compiled once per dialect and run as driver SQL.

Building and compiling SQLAlchemy constructs per call cost more than SQLite's own work; these
statements are fixed, so they are rendered once with named bind parameters. On PostgreSQL the hot
path goes below psycopg's cursor too (``PqStatement``).
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from slurmlink.store import schema

#: SQLSTATE invalid_sql_statement_name: the connection does not know the prepared statement.
_UNKNOWN_STATEMENT = "26000"


def _text(raw: bytes) -> str:
    return raw.decode()


#: Result column types (PostgreSQL OIDs) the hot statements return, decoded from libpq's text format;
#: any other type is taken as text.
_DECODE: dict[int, Any] = {
    16: lambda raw: raw == b"t",  # bool
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
}


class Prepared:
    """One statement rendered for a dialect; ``run`` binds values by name."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect, name: str = "") -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.constants = {k: v for k, v in compiled.params.items() if v is not None}
        self.order = list(compiled.positiontup or []) if compiled.positional else None
        #: PostgreSQL: the same statement with ``$n`` parameters, run through libpq directly.
        self._pq = PqStatement(statement, name) if dialect.name == "postgresql" else None

    def params(self, values: dict[str, Any]) -> Any:
        merged = {**self.constants, **values}
        return tuple(merged[k] for k in self.order) if self.order is not None else merged

    def run(self, conn: sa.Connection, **values: Any) -> sa.CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.params(values))

    def run_driver(self, driver: Any, **values: Any) -> Any:
        """Run on the DB-API connection directly (psycopg or sqlite3, below SQLAlchemy).

        Returns something with ``fetchone()`` and ``rowcount``: sqlite3's cursor, or on PostgreSQL
        the first row of libpq's result.
        """
        if self._pq is not None:
            return self._pq.run(driver, {**self.constants, **values})
        return driver.execute(self.sql, self.params(values))


class PqStatement:
    """A PostgreSQL statement prepared once per connection and run with libpq's ``PQexecPrepared``.

    psycopg's cursor costs about 40 µs of client CPU per call (its adaptation, prepared-statement
    cache and result machinery), more than the rest of a write's client work; the hot statements
    take only text and integers and return a row or a count, which libpq's text format carries as
    is. libpq releases the GIL while it waits, as psycopg does. Errors are psycopg's exceptions.
    """

    def __init__(self, statement: sa.ClauseElement, name: str) -> None:
        compiled = statement.compile(dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar"))
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled).encode()
        self.order = list(compiled.positiontup or [])
        self.name = f"slurmlink_{name}".encode()
        #: Per connection (libpq's PGconn), the statements prepared on it.
        self._prepared: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def run(self, conn: Any, values: dict[str, Any]) -> PqResult:
        from psycopg import pq

        pgconn = conn.pgconn
        params = [_encode(values[k]) for k in self.order]
        if pgconn not in self._prepared:
            self._prepare(pgconn)
        result = pgconn.exec_prepared(self.name, params)
        if result.status == pq.ExecStatus.FATAL_ERROR and _sqlstate(result) == _UNKNOWN_STATEMENT:
            self._prepare(pgconn)  # the session lost it (DISCARD ALL): once more
            result = pgconn.exec_prepared(self.name, params)
        _check(pgconn, result)
        return PqResult(result)

    def _prepare(self, pgconn: Any) -> None:
        result = pgconn.prepare(self.name, self.sql)
        _check(pgconn, result)
        self._prepared[pgconn] = True


class PqResult:
    """The part of a cursor the store uses: the first row, and how many rows a statement changed."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        self._result = result

    @property
    def rowcount(self) -> int:
        status = self._result.command_tuples
        return -1 if status is None else int(status)

    def fetchone(self) -> tuple[Any, ...] | None:
        result = self._result
        if result.ntuples == 0:
            return None
        row = []
        for column in range(result.nfields):
            raw = result.get_value(0, column)
            row.append(None if raw is None else _DECODE.get(result.ftype(column), _text)(raw))
        return tuple(row)


def _encode(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    return (value if isinstance(value, str) else str(value)).encode()


def _sqlstate(result: Any) -> str | None:
    from psycopg import pq

    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def _check(pgconn: Any, result: Any) -> None:
    """Raise psycopg's exception for a failed call (OperationalError once the connection broke)."""
    import psycopg
    from psycopg import pq

    if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return
    if pgconn.status == pq.ConnStatus.BAD:
        message = (result.error_message or pgconn.error_message).decode(errors="replace").strip()
        raise psycopg.OperationalError(message or "the connection to PostgreSQL was lost")
    raise psycopg.errors.error_from_result(result, encoding="utf-8")


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
    return {name: Prepared(stmt, dialect, name) for name, stmt in statements.items()}
