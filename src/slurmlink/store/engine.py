"""SQLAlchemy engines for the store's two databases, tuned for its access pattern."""

from __future__ import annotations

import sqlite3
import time
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
