"""The object store on SQL: SQLite (embedded default) or PostgreSQL (scale-out).

Every write is one transaction that bumps the global revision (row lock on the counter, so writers
are serialised and revisions commit in order), changes the object row with a compare-and-swap on its
revision, and appends to the event log. PostgreSQL writes also ``pg_notify`` so other replicas'
watch hubs wake up; in-process listeners are told directly after commit.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.sql.compiler import SQLCompiler

from slurmlink import jsonutil
from slurmlink.store import schema
from slurmlink.store.errors import (
    AlreadyExistsError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    SchemaVersionError,
    UnavailableError,
)
from slurmlink.store.events import Event, EventType

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "slurmlink_events"
_MIGRATION_LOCK_KEY = 0x51C4_7A11

CommitListener = Callable[[Event], None]


def _dumps(obj: dict[str, Any]) -> str:
    return jsonutil.dumps_str(obj)


def _stamp(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    """A copy of ``obj`` (top level and metadata) carrying ``resourceVersion == revision``.

    The caller's dict is left alone, so a write that fails (conflict, rollback) does not leave a
    revision that never committed in the caller's object.
    """
    return {**obj, "metadata": {**(obj.get("metadata") or {}), "resourceVersion": str(revision)}}


class _Prepared:
    """A hot-path statement compiled once for the engine's dialect and run as driver SQL.

    Building and compiling SQLAlchemy constructs per call cost more than SQLite's own work; these
    statements are fixed, so they are rendered once with named bind parameters.
    """

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.constants = {k: v for k, v in compiled.params.items() if v is not None}
        self.order = list(compiled.positiontup or []) if compiled.positional else None

    def run(self, conn: sa.Connection, **values: Any) -> sa.CursorResult[Any]:
        merged = {**self.constants, **values}
        params: Any = tuple(merged[k] for k in self.order) if self.order is not None else merged
        return conn.exec_driver_sql(self.sql, params)


def _statements(dialect: sa.Dialect) -> dict[str, _Prepared]:
    o, e, c, b = schema.objects, schema.events, schema.counters, sa.bindparam
    key = (o.c.resource == b("k_resource"), o.c.namespace == b("k_namespace"), o.c.name == b("k_name"))
    statements: dict[str, sa.ClauseElement] = {
        "get": sa.select(o.c.data).where(*key),
        "get_revision": sa.select(o.c.revision).where(*key),
        "bump": c.update().where(c.c.id == 1).values(revision=c.c.revision + 1).returning(c.c.revision),
        "current": sa.select(c.c.revision),
        "update": o.update()
        .where(*key, o.c.revision == b("k_expected"))
        .values(revision=b("v_revision"), data=b("v_data")),
        "event": e.insert().values(
            revision=b("e_revision"),
            type=b("e_type"),
            resource=b("e_resource"),
            namespace=b("e_namespace"),
            name=b("e_name"),
            data=b("e_data"),
        ),
    }
    return {name: _Prepared(stmt, dialect) for name, stmt in statements.items()}


class SqlStore:
    """Key-value-with-watch store over SQLAlchemy Core; thread-safe, synchronous."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = _make_engine(url, echo=echo)
        self.dialect = self.engine.dialect.name
        self._write_lock = threading.Lock()
        self._sql = _statements(self.engine.dialect)
        self._listeners: list[CommitListener] = []
        try:
            migrate(self.engine)
        except BaseException as exc:
            self.engine.dispose()
            if isinstance(exc, sa.exc.OperationalError):
                raise UnavailableError(f"cannot open the store at {_redact(url)}: {exc.orig}") from exc
            raise

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(event)`` after each local commit, in revision order."""
        self._listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ---- reads -------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = self._sql["get"].run(conn, k_resource=resource, k_namespace=namespace, k_name=name).first()
        return jsonutil.loads(row[0]) if row else None

    def list(self, resource: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """All objects of a resource (in one namespace or all) and the revision they are consistent with."""
        t = schema.objects
        query = sa.select(t.c.data).where(t.c.resource == resource)
        if namespace is not None:
            query = query.where(t.c.namespace == namespace)
        query = query.order_by(t.c.namespace, t.c.name)
        with self._read() as conn:
            revision = self._current_revision(conn)
            rows = conn.execute(query).all()
        return [jsonutil.loads(r[0]) for r in rows], revision

    def current_revision(self) -> int:
        with self._read() as conn:
            return self._current_revision(conn)

    def compacted_revision(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(schema.counters.c.compacted)).scalar_one())

    def events_after(self, revision: int, limit: int = 10_000) -> builtins.list[Event]:
        """Events with revision > ``revision``; ExpiredError if compaction removed some of them."""
        t = schema.events
        with self._read() as conn:
            compacted = int(conn.execute(sa.select(schema.counters.c.compacted)).scalar_one())
            if revision < compacted:
                raise ExpiredError(revision, compacted)
            rows = conn.execute(
                sa.select(t.c.revision, t.c.type, t.c.resource, t.c.namespace, t.c.name, t.c.data)
                .where(t.c.revision > revision)
                .order_by(t.c.revision)
                .limit(limit)
            ).all()
        return [Event(int(r[0]), r[1], r[2], r[3], r[4], jsonutil.loads(r[5])) for r in rows]

    # ---- writes ------------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        def apply(conn: sa.Connection, revision: int) -> tuple[EventType, dict[str, Any], str]:
            stamped = _stamp(obj, revision)
            data = _dumps(stamped)
            try:
                with conn.begin_nested():
                    conn.execute(
                        schema.objects.insert().values(
                            resource=resource,
                            namespace=namespace,
                            name=name,
                            revision=revision,
                            data=data,
                        )
                    )
            except sa.exc.IntegrityError as exc:
                raise AlreadyExistsError(f"{resource} {namespace}/{name} already exists") from exc
            return "ADDED", stamped, data

        return self._write(resource, namespace, name, apply)[1]

    def update(
        self, resource: str, namespace: str, name: str, obj: dict[str, Any], expected_revision: int
    ) -> dict[str, Any]:
        """Replace the object if its stored revision is still ``expected_revision``."""

        def apply(conn: sa.Connection, revision: int) -> tuple[EventType, dict[str, Any], str]:
            stamped = _stamp(obj, revision)
            data = _dumps(stamped)
            result = self._sql["update"].run(
                conn,
                k_resource=resource,
                k_namespace=namespace,
                k_name=name,
                k_expected=expected_revision,
                v_revision=revision,
                v_data=data,
            )
            if result.rowcount == 0:
                self._raise_missing_or_conflict(conn, resource, namespace, name)
            return "MODIFIED", stamped, data

        return self._write(resource, namespace, name, apply)[1]

    def delete(
        self, resource: str, namespace: str, name: str, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """Remove the object; returns its last state stamped with the deleting revision."""
        t = schema.objects
        key = (t.c.resource == resource, t.c.namespace == namespace, t.c.name == name)

        def apply(conn: sa.Connection, revision: int) -> tuple[EventType, dict[str, Any], str]:
            row = conn.execute(sa.select(t.c.revision, t.c.data).where(*key)).first()
            if row is None:
                raise NotFoundError(f"{resource} {namespace}/{name} not found")
            if expected_revision is not None and int(row[0]) != expected_revision:
                raise ConflictError(f"{resource} {namespace}/{name} changed")
            conn.execute(t.delete().where(*key))
            stamped = _stamp(jsonutil.loads(row[1]), revision)
            return "DELETED", stamped, _dumps(stamped)

        return self._write(resource, namespace, name, apply)[1]

    def compact(self, retain: int) -> int:
        """Drop events older than the newest ``retain`` revisions; returns the compaction point.

        Safe when several replicas compact at once: the point only ever moves forward (a
        compactor that computed an older point must not lower it below events another one has
        already deleted, or a watch from between the two points would silently miss events).
        """
        c = schema.counters
        with self._write_lock:
            try:
                with self.engine.begin() as conn:
                    current = self._current_revision(conn)
                    point = max(0, current - retain)
                    old = int(conn.execute(sa.select(c.c.compacted)).scalar_one())
                    if point <= old:
                        return old
                    conn.execute(schema.events.delete().where(schema.events.c.revision <= point))
                    conn.execute(c.update().where(c.c.id == 1, c.c.compacted < point).values(compacted=point))
                    return int(conn.execute(sa.select(c.c.compacted)).scalar_one())
            except sa.exc.OperationalError as exc:
                raise UnavailableError(f"store unavailable: {exc.orig}") from exc

    # ---- internals ---------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                if self.is_postgres:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            raise UnavailableError(f"store unavailable: {exc.orig}") from exc

    def _write(
        self,
        resource: str,
        namespace: str,
        name: str,
        apply: Callable[[sa.Connection, int], tuple[EventType, dict[str, Any], str]],
    ) -> tuple[int, dict[str, Any]]:
        """One write transaction; returns the committed revision and the caller's copy of the object."""
        try:
            with self._write_lock:
                with self.engine.begin() as conn:
                    revision = int(self._sql["bump"].run(conn).scalar_one())
                    kind, obj, data = apply(conn, revision)
                    self._sql["event"].run(
                        conn,
                        e_revision=revision,
                        e_type=kind,
                        e_resource=resource,
                        e_namespace=namespace,
                        e_name=name,
                        e_data=data,
                    )
                    if self.is_postgres:
                        conn.execute(
                            sa.text("SELECT pg_notify(:c, :r)"), {"c": NOTIFY_CHANNEL, "r": str(revision)}
                        )
                # Committed. Listeners get their own copy (watch rings keep events for a long time and
                # share them between watchers; the caller may go on mutating what it gets back), and a
                # failing listener must not turn a committed write into an error for the caller.
                if self._listeners:
                    event = Event(revision, kind, resource, namespace, name, jsonutil.loads(data))
                    for listener in list(self._listeners):
                        try:
                            listener(event)
                        except Exception:
                            log.exception("commit listener failed at revision %d", revision)
                return revision, obj
        except sa.exc.OperationalError as exc:
            raise UnavailableError(f"store unavailable: {exc.orig}") from exc

    def _current_revision(self, conn: sa.Connection) -> int:
        return int(self._sql["current"].run(conn).scalar_one())

    @staticmethod
    def _raise_missing_or_conflict(conn: sa.Connection, resource: str, namespace: str, name: str) -> None:
        t = schema.objects
        exists = conn.execute(
            sa.select(t.c.revision).where(
                t.c.resource == resource, t.c.namespace == namespace, t.c.name == name
            )
        ).first()
        if exists is None:
            raise NotFoundError(f"{resource} {namespace}/{name} not found")
        raise ConflictError(f"{resource} {namespace}/{name} changed")


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _make_engine(url: str, *, echo: bool) -> sa.Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
            pool_size=8,
            max_overflow=8,
        )

        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa_event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # The driver's own transaction handling is off (isolation_level=None); an explicit
            # BEGIN makes multi-statement reads one consistent WAL snapshot.
            conn.exec_driver_sql("BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise ValueError(f"unsupported store URL {_redact(url)!r}: use sqlite:///PATH or postgresql://...")


def migrate(engine: sa.Engine) -> int:
    """Bring the schema to the latest version; safe when several replicas start at once.

    Each applied step is recorded in ``schema_version`` in the same transaction as the step, so a
    crash mid-migration leaves the previous version. A database newer than this code is refused
    (SchemaVersionError) rather than written with the wrong layout.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        schema.schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0
        if current > schema.LATEST_VERSION:
            raise SchemaVersionError(int(current), schema.LATEST_VERSION)
        for version, step in schema.MIGRATIONS:
            if version > current:
                step(conn)
                conn.execute(
                    schema.schema_version.insert().values(
                        version=version, applied_at=dt.datetime.now(dt.UTC).isoformat()
                    )
                )
        return schema.LATEST_VERSION
