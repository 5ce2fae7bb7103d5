"""SQLAlchemy engines for the store's two databases, tuned for its access pattern."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

#: Execution option naming the statement that opens an SQLite transaction (``BEGIN IMMEDIATE`` for
#: writers takes the write lock up front, so a transaction that reads before it writes cannot fail
#: with SQLITE_BUSY halfway when another process wrote in between).
SQLITE_BEGIN = "slurmlink_sqlite_begin"

#: PostgreSQL connections per store (half kept in the pool, half opened under load).
POOL_CONNECTIONS = 20


def redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def make_engine(url: str, *, echo: bool = False) -> sa.Engine:
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
            cur.execute("PRAGMA busy_timeout=30000")
            _enter_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa_event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # The driver's own transaction handling is off (isolation_level=None); an explicit
            # BEGIN makes multi-statement reads one consistent WAL snapshot.
            conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN, "BEGIN"))

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(
            parsed, echo=echo, pool_size=POOL_CONNECTIONS // 2, max_overflow=POOL_CONNECTIONS // 2
        )
        _ping_when_idle(engine)
        return engine
    raise ValueError(f"unsupported store URL {redact(url)!r}: use sqlite:///PATH or postgresql://...")


#: How long a new SQLite connection keeps trying to switch a fresh database to WAL.
WAL_SWITCH_SECONDS = 30.0


def _enter_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the database.

    On a fresh database (still in rollback-journal mode) the switch needs an exclusive lock. When
    another process is migrating at that moment, SQLite answers "database is locked" at once instead
    of waiting (it would deadlock against that writer's commit), so the switch is tried again.
    """
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


#: A pooled connection idle for longer than this is pinged before use.
IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: sa.Engine) -> None:
    """Check a pooled connection before use only if it sat idle (e.g. across a database restart).

    ``pool_pre_ping`` pings on every checkout: one more round trip per statement under load, where
    connections come back within milliseconds. A connection found dead here is replaced by the pool.
    """

    @sa_event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa_event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            if dbapi_conn.autocommit:
                dbapi_conn.execute("SELECT 1")
            else:
                dbapi_conn.execute("SELECT 1")
                dbapi_conn.rollback()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc


def libpq_dsn(url: sa.URL) -> str:
    """A PostgreSQL URL as libpq takes it (for connections made without SQLAlchemy)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class AutocommitPool:
    """psycopg connections kept in autocommit, for single statements on the hot paths.

    SQLAlchemy's pool switches a connection into autocommit and back and rolls it back on every
    check-in: three more passes through psycopg per statement, more than the statement's own client
    cost. These connections stay in autocommit. One that failed with a connection error is closed;
    one idle for longer than ``IDLE_PING_SECONDS`` is pinged before use (e.g. across a database
    restart), as the engine's pool does.
    """

    def __init__(self, dsn: str, *, keep: int = POOL_CONNECTIONS // 2, options: str = "") -> None:
        self.dsn = dsn
        self.keep = keep
        #: Server settings for every connection (libpq ``options``, e.g. ``-c lock_timeout=20``).
        self.options = options
        self._idle: list[tuple[Any, float]] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self, *, connect: bool = True) -> Iterator[Any]:
        """An idle connection, or a new one; with ``connect=False`` None when none is idle (code on
        an event loop must not wait for a connection to be made)."""
        import psycopg

        conn = self._take(connect=connect)
        if conn is None:
            yield None
            return
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise
        except BaseException:
            self._give(conn)  # a failed statement leaves an autocommit connection usable
            raise
        self._give(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def fill(self) -> None:
        """Open connections until ``keep`` are idle (from a worker thread: connecting waits)."""
        while True:
            with self._lock:
                if self._closed or len(self._idle) >= self.keep:
                    return
            self._give(self._connect())

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, options=self.options)

    def _take(self, *, connect: bool = True) -> Any:
        import psycopg

        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since < IDLE_PING_SECONDS:
                return conn
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                conn.close()
        return self._connect() if connect else None

    def _give(self, conn: Any) -> None:
        if conn.closed or conn.info.transaction_status != 0:  # not idle: do not hand it out again
            conn.close()
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.keep:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()
