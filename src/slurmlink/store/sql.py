"""The object store on SQL: SQLite (embedded default) or PostgreSQL (scale-out).

Writes go through the unit of work (``transaction.py``): each object write takes the next global
revision (row lock on the counter, so object-writing transactions are serialised and commit in revision
order), changes the object row with a compare-and-swap on its revision and appends to the event log.
PostgreSQL transactions also notify, when another process's watch hub is registered, so other
replicas' watch hubs wake up; in-process listeners are told directly after commit.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from slurmlink import jsonutil
from slurmlink.store import schema, statements
from slurmlink.store.engine import SQLITE_BEGIN, AutocommitPool, libpq_dsn, make_engine, redact
from slurmlink.store.errors import (
    ExpiredError,
    SerializationError,
    UnavailableError,
    WouldBlockError,
)
from slurmlink.store.events import Event
from slurmlink.store.migrations import migrate
from slurmlink.store.transaction import RETRYABLE_SQLSTATES, NotOneStatementError, Transaction, is_retryable

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "slurmlink_events"
#: Where watch hubs register, so writers notify only when someone else listens (objects_0004).
WATCHERS_TABLE = "slurmlink_watchers"

#: Worker threads for ``call`` on PostgreSQL. Few: each call waits well under a millisecond for the
#: database, and every further thread that wakes up competes with the event loop for the GIL (the
#: workflow benchmark ran faster with 4 than with 2 or 20).
CALL_THREADS = 4

#: ``call_brief`` on PostgreSQL: how long a statement run on the event loop may wait for a lock.
LOOP_LOCK_TIMEOUT_MS = 20
#: SQLSTATE lock_not_available (lock_timeout expired).
LOCK_NOT_AVAILABLE = "55P03"

#: Set while ``call_brief`` runs a function on the event loop (per thread: the loop's).
_on_loop = threading.local()

CommitListener = Callable[[Event], None]
Isolation = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
T = TypeVar("T")


class SqlStore:
    """Key-value-with-watch store over SQLAlchemy Core; thread-safe, synchronous."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.dialect = self.engine.dialect.name
        self._write_lock = threading.Lock()
        self._sql = statements.build(self.engine.dialect)
        self._listeners: list[CommitListener] = []
        #: Per resource, the newest revision this store object committed (read-your-writes checks
        #: for caches fed by its events).
        self.local_revisions: dict[str, int] = {}
        self._local_revision_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="store")
        #: SQLite: the pooled connection single writes keep (see ``_sqlite_write``).
        self._writer: Any = None
        #: PostgreSQL: connections for single statements (see ``_driver``); those used on the event
        #: loop give up waiting for a lock after LOOP_LOCK_TIMEOUT_MS (see ``call_brief``).
        dsn = libpq_dsn(self.engine.url)
        self._autocommit = AutocommitPool(dsn) if self.is_postgres else None
        self._loop_autocommit = (
            AutocommitPool(dsn, keep=2, options=f"-c lock_timeout={LOOP_LOCK_TIMEOUT_MS}")
            if self.is_postgres
            else None
        )
        #: Names this store in its notifications, so its own watch hub can tell them from others'.
        self.origin = uuid.uuid4().hex[:16]
        # PostgreSQL: single statements (reads, the write functions) run without BEGIN/COMMIT round
        # trips; one statement sees one snapshot and commits atomically by itself.
        self._single = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else self.engine
        )
        try:
            migrate(self.engine)
        except BaseException as exc:
            self.engine.dispose()
            if isinstance(exc, sa.exc.OperationalError):
                raise UnavailableError(f"cannot open the store at {redact(url)}: {exc.orig}") from exc
            raise

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def inline(self) -> bool:
        """Whether ``call`` runs right on the event loop: SQLite answers in tens of microseconds."""
        return not self.is_postgres

    async def call_brief(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` for a function whose store calls are single statements with at most one write.

        The API server's create, get, list, update and delete are such functions. On PostgreSQL too
        they run on the event loop: a statement there takes a round trip, less than handing the call
        to a thread and back. Lock waits are capped at ``LOOP_LOCK_TIMEOUT_MS`` (a write waits for
        the revision counter while another process's transaction holds it); a call that would wait
        longer, would open a transaction or would have to open a connection first stops and runs
        again in a worker thread, where it may wait. The stopped attempt wrote nothing: its one
        write is what stopped it.
        """
        if not self.is_postgres:
            return fn(*args, **kwargs)
        _on_loop.active = True
        try:
            return fn(*args, **kwargs)
        except WouldBlockError:
            pass
        finally:
            _on_loop.active = False
        assert self._loop_autocommit is not None
        self._executor.submit(self._loop_autocommit.fill)  # connections for the next calls on the loop
        return await self.call(fn, *args, **kwargs)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` (a synchronous store or store-using function) from async code.

        On SQLite it runs right on the event loop (no thread hop, no GIL hand-off); on PostgreSQL,
        which waits on the network, in a worker thread.
        """
        if self.inline:
            return fn(*args, **kwargs)
        # A plain executor, not anyio.to_thread: its cancel scopes and capacity limiter cost the event
        # loop more than the call itself. Like anyio's default, a caller cancelled meanwhile still
        # waits for the call to finish, so nothing it started is left running behind its back.
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        for pool in (self._autocommit, self._loop_autocommit):
            if pool is not None:
                pool.close()
        self.engine.dispose()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(event)`` after each local commit, in revision order."""
        self._listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ---- reads -------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = {"k_resource": resource, "k_namespace": namespace, "k_name": name}
        # The hottest read: one statement (its own snapshot) below SQLAlchemy's per-call overhead.
        with self._driver() as driver:
            row = self._sql["get"].run_driver(driver, **key).fetchone()
        return jsonutil.loads(row[0]) if row else None

    def list(self, resource: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """All objects of a resource (in one namespace or all) and the revision they are consistent with."""
        c, o = schema.counters, schema.objects
        on = o.c.resource == resource
        if namespace is not None:
            on = sa.and_(on, o.c.namespace == namespace)
        # One statement (one snapshot): the counter row, outer-joined with the matching objects.
        query = (
            sa.select(c.c.revision, o.c.data)
            .select_from(c.outerjoin(o, on))
            .where(c.c.id == 1)
            .order_by(o.c.namespace, o.c.name)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [jsonutil.loads(r[1]) for r in rows if r[1] is not None], int(rows[0][0])

    def snapshot(self) -> tuple[builtins.list[Event], int]:
        """Every object (as an ADDED event at its own revision) and the revision they are consistent with."""
        c, o = schema.counters, schema.objects
        query = (
            sa.select(c.c.revision, o.c.resource, o.c.namespace, o.c.name, o.c.revision, o.c.data)
            .select_from(c.outerjoin(o, sa.true()))
            .where(c.c.id == 1)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        live = [r for r in rows if r[1] is not None]
        objects = [Event(int(r[4]), "ADDED", r[1], r[2], r[3], jsonutil.loads(r[5])) for r in live]
        return objects, int(rows[0][0])

    def current_revision(self) -> int:
        # One statement on the DB-API connection: the watch hub asks every second.
        with self._driver() as driver:
            return int(self._sql["current"].run_driver(driver).fetchone()[0])

    def compacted_revision(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(schema.counters.c.compacted)).scalar_one())

    def events_after(self, revision: int, limit: int = 10_000) -> builtins.list[Event]:
        """Events with revision > ``revision``; ExpiredError if compaction removed some of them."""
        c, e = schema.counters, schema.events
        # One statement (one snapshot, one round trip): the compaction point outer-joined with the
        # events after ``revision``.
        query = (
            sa.select(c.c.compacted, e.c.revision, e.c.type, e.c.resource, e.c.namespace, e.c.name, e.c.data)
            .select_from(c.outerjoin(e, e.c.revision > revision))
            .where(c.c.id == 1)
            .order_by(e.c.revision)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        compacted = int(rows[0][0])
        if revision < compacted:
            raise ExpiredError(revision, compacted)
        return [
            Event(int(r[1]), r[2], r[3], r[4], r[5], jsonutil.loads(r[6])) for r in rows if r[1] is not None
        ]

    # ---- writes ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, isolation: Isolation | None = None) -> Iterator[Transaction]:
        """One database transaction over objects and relational tables (``tx.connection``).

        Commits when the block ends, rolls everything back if it raises; commit listeners hear of
        the transaction's events after commit, in revision order. No retries: on PostgreSQL a
        serialization failure or deadlock surfaces as SerializationError (prefer ``run_transaction``).
        Do not nest transactions. ``isolation`` applies to PostgreSQL (default READ COMMITTED; the
        counter's row lock already orders object writes); SQLite transactions are serialisable.
        """
        with self._transaction(isolation, one_statement=False) as tx:
            yield tx

    def run_transaction(
        self, fn: Callable[[Transaction], T], *, isolation: Isolation | None = None, attempts: int = 20
    ) -> T:
        """``fn(tx)`` in one transaction, run again from the start after a SerializationError.

        ``fn`` may therefore run more than once: it must not have effects outside the transaction
        (or they must be safe to repeat), and must recompute everything from what it reads through
        ``tx``. Other errors, and the last SerializationError, propagate with nothing committed.
        """
        return self._retrying(fn, isolation, attempts, one_statement=False)

    def create(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._write_one(lambda tx: tx.create(resource, namespace, name, obj))

    def update(
        self, resource: str, namespace: str, name: str, obj: dict[str, Any], expected_revision: int
    ) -> dict[str, Any]:
        """Replace the object if its stored revision is still ``expected_revision``."""
        return self._write_one(lambda tx: tx.update(resource, namespace, name, obj, expected_revision))

    def delete(
        self, resource: str, namespace: str, name: str, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """Remove the object; returns its last state stamped with the deleting revision."""
        return self._write_one(lambda tx: tx.delete(resource, namespace, name, expected_revision))

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
        """A connection for one read statement (on PostgreSQL without BEGIN/COMMIT round trips)."""
        try:
            with self._single.connect() as conn, conn.begin():
                yield conn
        except sa.exc.OperationalError as exc:
            raise UnavailableError(f"store unavailable: {exc.orig}") from exc

    def _write_one(self, fn: Callable[[Transaction], T]) -> T:
        """A single-object write: on PostgreSQL one autocommitted call of a write function.

        Falls back to a whole transaction when the write cannot be one statement.
        """
        if self.is_postgres:
            try:
                return self._retrying(fn, None, 20, one_statement=True)
            except NotOneStatementError:
                pass
            return self.run_transaction(fn)
        return self._sqlite_write(fn)

    def _sqlite_write(self, fn: Callable[[Transaction], T]) -> T:
        """A single-object write on SQLite: BEGIN IMMEDIATE ... COMMIT on the sqlite3 connection.

        The statements are the general way's; only SQLAlchemy's connection, transaction and result
        layers are skipped, which cost more than SQLite's own work here. Writes are serialised by the
        write lock, so one connection serves them all.
        """
        with self._write_lock:
            try:
                driver = self._sqlite_writer()
                driver.execute("BEGIN IMMEDIATE")
                try:
                    tx = Transaction(None, self._sql, origin=self.origin, driver=driver)
                    result = fn(tx)
                    driver.execute("COMMIT")
                except BaseException:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                self._drop_sqlite_writer()
                raise UnavailableError(f"store unavailable: {exc}") from exc
            # Inside the lock, so local listeners hear of commits in revision order.
            self._publish(tx)
            return result

    def _sqlite_writer(self) -> sqlite3.Connection:
        """The connection single writes use, checked out of the pool once and kept."""
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        driver = self._writer.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        return driver

    def _drop_sqlite_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.invalidate()

    def _retrying(
        self,
        fn: Callable[[Transaction], T],
        isolation: Isolation | None,
        attempts: int,
        *,
        one_statement: bool,
    ) -> T:
        for attempt in itertools.count(1):
            try:
                with self._transaction(isolation, one_statement=one_statement) as tx:
                    return fn(tx)
            except SerializationError as exc:
                if getattr(_on_loop, "active", False):
                    raise WouldBlockError("retry in a worker thread") from exc  # no sleeping on the loop
                if attempt >= attempts:
                    raise
                # Jittered back-off, so the transactions that collided do not collide again in step.
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise AssertionError("unreachable")

    @contextmanager
    def _transaction(self, isolation: Isolation | None, *, one_statement: bool) -> Iterator[Transaction]:
        """See ``transaction``. ``one_statement``: PostgreSQL autocommit, for one atomic statement."""
        if one_statement and self.is_postgres:
            with self._driver() as driver:
                tx = Transaction(None, self._sql, origin=self.origin, one_statement=True, driver=driver)
                yield tx
            self._publish(tx)
            return
        if self.is_postgres and getattr(_on_loop, "active", False):
            raise WouldBlockError("a transaction runs in a worker thread")
        lock = self._write_lock if not self.is_postgres else contextlib.nullcontext()
        try:
            with lock:
                with self.engine.connect() as conn:
                    if not self.is_postgres:
                        conn.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
                    elif isolation is not None:
                        conn.execution_options(isolation_level=isolation)
                    with conn.begin():
                        tx = Transaction(conn, self._sql, origin=self.origin, one_statement=one_statement)
                        yield tx
                        if tx.notify_at_commit and self.is_postgres:
                            conn.execute(
                                sa.text("SELECT slurmlink_notify(:r, :o)"),
                                {"r": tx.changes[-1].revision, "o": self.origin},
                            )
                # Inside the lock on SQLite, so local listeners hear of commits in revision order.
                self._publish(tx)
        except sa.exc.DBAPIError as exc:
            if is_retryable(exc):
                raise SerializationError(f"transaction aborted, run it again: {exc.orig}") from exc
            if isinstance(exc, sa.exc.OperationalError):
                raise UnavailableError(f"store unavailable: {exc.orig}") from exc
            raise

    @contextmanager
    def _driver(self) -> Iterator[Any]:
        """A DB-API connection used directly for one statement (the hot paths).

        SQLAlchemy's Connection, transaction and result layers cost more per call than the statement
        itself. On PostgreSQL it is one of the store's autocommit connections, on SQLite a pooled
        sqlite3 connection (always in autocommit: ``isolation_level=None``). Errors are mapped as
        SQLAlchemy's would be, and a connection that failed is dropped.
        """
        if self._autocommit is not None and self._loop_autocommit is not None:
            import psycopg

            on_loop = getattr(_on_loop, "active", False)
            pool = self._loop_autocommit if on_loop else self._autocommit
            try:
                with pool.connection(connect=not on_loop) as conn:
                    if conn is None:  # none open: connecting may wait, so not on the loop
                        raise WouldBlockError("no idle connection")
                    yield conn
            except psycopg.Error as exc:
                if on_loop and getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                    raise WouldBlockError(f"lock wait over {LOOP_LOCK_TIMEOUT_MS} ms") from exc
                if getattr(exc, "sqlstate", None) in RETRYABLE_SQLSTATES:
                    raise SerializationError(f"transaction aborted, run it again: {exc}") from exc
                if isinstance(exc, psycopg.OperationalError):
                    raise UnavailableError(f"store unavailable: {exc}") from exc
                raise
            return
        try:
            fairy = self.engine.raw_connection()
        except sa.exc.OperationalError as exc:
            raise UnavailableError(f"store unavailable: {exc.orig}") from exc
        try:
            yield fairy.driver_connection
        except sqlite3.OperationalError as exc:
            fairy.invalidate(exc)
            raise UnavailableError(f"store unavailable: {exc}") from exc
        finally:
            fairy.close()

    def _publish(self, tx: Transaction) -> None:
        """Tell listeners of a committed transaction's events.

        Listeners get their own copy (watch rings keep events for a long time and share them between
        watchers; the caller may go on mutating what it gets back), and a failing listener must not
        turn a committed write into an error for the caller.
        """
        if not tx.changes:
            return
        with self._local_revision_lock:
            for change in tx.changes:
                if change.revision > self.local_revisions.get(change.resource, 0):
                    self.local_revisions[change.resource] = change.revision
        if not self._listeners:
            return
        for change in tx.changes:
            event = change.event()
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("commit listener failed at revision %d", change.revision)

    def _current_revision(self, conn: sa.Connection) -> int:
        return int(self._sql["current"].run(conn).scalar_one())
