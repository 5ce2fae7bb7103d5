"""The store's unit of work: several objects and relational tables in one database transaction.

Every object write inside a transaction takes the next global revision (so each change is one event
with its own, increasing revision) and appends its event in the same transaction. The global counter's
row lock is held from the first object write to commit, so transactions that write objects commit in
revision order and the event log never shows a partial transaction or a gap. Listeners hear about the
events only after commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from slurmlink import jsonutil
from slurmlink.store import schema
from slurmlink.store.errors import AlreadyExistsError, ConflictError, NotFoundError
from slurmlink.store.events import Event, EventType

if TYPE_CHECKING:
    from slurmlink.store.statements import Prepared

#: PostgreSQL SQLSTATEs after which running the whole transaction again may succeed.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

#: Stands in for the revision while an object is serialised for a server-side write function.
_PLACEHOLDER = f"slurmlink-revision-{uuid.uuid4().hex}"


def stamp(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    """A copy of ``obj`` (top level and metadata) carrying ``resourceVersion == revision``.

    The caller's dict is left alone, so a write that fails (conflict, rollback) does not leave a
    revision that never committed in the caller's object.
    """
    return stamp_raw(obj, str(revision))


def split_at_revision(obj: dict[str, Any]) -> tuple[str, str] | None:
    """``obj`` as JSON text cut where its resourceVersion goes, for ``head + str(revision) + tail``.

    None if the placeholder occurs elsewhere in the object too (the caller then takes the general path).
    """
    parts = jsonutil.dumps_str(stamp_raw(obj, _PLACEHOLDER)).split(_PLACEHOLDER)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def stamp_raw(obj: dict[str, Any], revision: str) -> dict[str, Any]:
    return {**obj, "metadata": {**(obj.get("metadata") or {}), "resourceVersion": revision}}


class NotOneStatementError(Exception):
    """A write that needs several statements was tried where only one atomic statement may run."""


@dataclass(frozen=True, slots=True)
class _Change:
    """An event written in this transaction, kept as text until someone needs the object."""

    revision: int
    type: EventType
    resource: str
    namespace: str
    name: str
    data: str

    def event(self) -> Event:
        return Event(
            self.revision, self.type, self.resource, self.namespace, self.name, jsonutil.loads(self.data)
        )


class Transaction:
    """Object reads and writes plus ``connection`` for SQLAlchemy Core on any other table.

    Obtained from ``SqlStore.transaction()`` or ``SqlStore.run_transaction(fn)``; valid only inside
    it. A store error raised by a write (conflict, missing, exists) leaves the transaction usable: that
    write changed nothing and took no revision.
    """

    def __init__(
        self,
        connection: sa.Connection | None,
        sql: dict[str, Prepared],
        *,
        origin: str = "",
        one_statement: bool = False,
        driver: Any = None,
    ) -> None:
        self._connection = connection
        #: The DB-API connection of a lone write, below SQLAlchemy's per-call overhead: psycopg in
        #: autocommit (one function call) or sqlite3 inside the store's BEGIN IMMEDIATE.
        self._driver = driver
        self._sql = sql
        #: PostgreSQL: create and update are one call of a server-side function that also notifies.
        self._functions = "fn_update" in sql
        self._one_statement = one_statement
        self._origin = origin
        self.changes: list[_Change] = []
        #: Whether a write went the general way, which leaves notifying other replicas to the commit.
        self.notify_at_commit = False

    @property
    def connection(self) -> sa.Connection:
        """The transaction's connection: statements on relational tables commit or roll back with it."""
        if self._connection is None:
            raise RuntimeError("a single-write transaction has no connection")
        return self._connection

    # ---- reads -------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as this transaction sees it (its own writes included)."""
        row = self._first("get", k_resource=resource, k_namespace=namespace, k_name=name)
        return jsonutil.loads(row[0]) if row else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``resource`` (in ``namespace`` when given) as this transaction sees it."""
        o = schema.objects
        query = sa.select(o.c.data).where(o.c.resource == resource)
        if namespace is not None:
            query = query.where(o.c.namespace == namespace)
        return [jsonutil.loads(row[0]) for row in self.connection.execute(query.order_by(o.c.name))]

    def lock_writes(self) -> None:
        """Take the object-write lock now (the revision counter's row) and hold it to commit.

        No other transaction writes an object until this one ends, and on PostgreSQL each statement
        after this sees every write committed before, so read-check-write logic over many objects
        (capacity placement) cannot interleave with another. SQLite transactions hold it already.
        """
        self.connection.execute(
            schema.counters.update()
            .where(schema.counters.c.id == 1)
            .values(revision=schema.counters.c.revision)
        )

    # ---- writes ------------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Insert a new object; AlreadyExistsError if the key is taken."""
        parts = split_at_revision(obj) if self._functions else None
        if parts is not None:
            key = {"k_resource": resource, "k_namespace": namespace, "k_name": name}
            revision = int(
                self._scalar("fn_create", **key, v_head=parts[0], v_tail=parts[1], v_origin=self._origin)
            )
            if revision <= 0:
                raise AlreadyExistsError(f"{resource} {namespace}/{name} already exists")
            return self._done(revision, "ADDED", resource, namespace, name, obj, parts)
        revision = self._bump()
        stamped = stamp(obj, revision)
        data = jsonutil.dumps_str(stamped)
        inserted = self._count(
            "insert",
            k_resource=resource,
            k_namespace=namespace,
            k_name=name,
            v_revision=revision,
            v_data=data,
        )
        if inserted == 0:
            self._unbump()
            raise AlreadyExistsError(f"{resource} {namespace}/{name} already exists")
        self._log(revision, "ADDED", resource, namespace, name, data)
        return stamped

    def update(
        self, resource: str, namespace: str, name: str, obj: dict[str, Any], expected_revision: int
    ) -> dict[str, Any]:
        """Replace the object if its stored revision is still ``expected_revision``."""
        parts = split_at_revision(obj) if self._functions else None
        if parts is not None:
            key = {"k_resource": resource, "k_namespace": namespace, "k_name": name}
            revision = int(
                self._scalar(
                    "fn_update",
                    **key,
                    k_expected=expected_revision,
                    v_head=parts[0],
                    v_tail=parts[1],
                    v_origin=self._origin,
                )
            )
            if revision < 0:
                raise NotFoundError(f"{resource} {namespace}/{name} not found")
            if revision == 0:
                raise ConflictError(f"{resource} {namespace}/{name} changed")
            return self._done(revision, "MODIFIED", resource, namespace, name, obj, parts)
        revision = self._bump()
        stamped = stamp(obj, revision)
        data = jsonutil.dumps_str(stamped)
        updated = self._count(
            "update",
            k_resource=resource,
            k_namespace=namespace,
            k_name=name,
            k_expected=expected_revision,
            v_revision=revision,
            v_data=data,
        )
        if updated == 0:
            self._unbump()
            exists = self._first("get_revision", k_resource=resource, k_namespace=namespace, k_name=name)
            if exists is None:
                raise NotFoundError(f"{resource} {namespace}/{name} not found")
            raise ConflictError(f"{resource} {namespace}/{name} changed")
        self._log(revision, "MODIFIED", resource, namespace, name, data)
        return stamped

    def delete(
        self, resource: str, namespace: str, name: str, expected_revision: int | None = None
    ) -> dict[str, Any]:
        """Remove the object; returns its last state stamped with the deleting revision."""
        key = {"k_resource": resource, "k_namespace": namespace, "k_name": name}
        if self._driver is not None and self._functions:  # a lone delete: one call (stamped by the database)
            try:
                found = (
                    self._sql["fn_delete"]
                    .run_driver(self._driver, **key, k_expected=expected_revision, v_origin=self._origin)
                    .fetchone()
                )
            except Exception as exc:
                # Class 22: the stored JSON is not valid jsonb (e.g. a \u0000 escape); nothing happened.
                if str(getattr(exc, "sqlstate", "")).startswith("22"):
                    raise NotOneStatementError from exc
                raise
            revision = int(found[0])
            if revision < 0:
                raise NotFoundError(f"{resource} {namespace}/{name} not found")
            if revision == 0:
                raise ConflictError(f"{resource} {namespace}/{name} changed")
            self.changes.append(_Change(revision, "DELETED", resource, namespace, name, found[1]))
            stamped: dict[str, Any] = jsonutil.loads(found[1])
            return stamped
        revision = self._bump()
        row: Any = self._first("get_row", **key)
        if row is None or (expected_revision is not None and int(row[0]) != expected_revision):
            self._unbump()
            if row is None:
                raise NotFoundError(f"{resource} {namespace}/{name} not found")
            raise ConflictError(f"{resource} {namespace}/{name} changed")
        self._count("delete", **key)
        stamped = stamp(jsonutil.loads(row[1]), revision)
        self._log(revision, "DELETED", resource, namespace, name, jsonutil.dumps_str(stamped))
        return stamped

    # ---- internals ---------------------------------------------------------------------------

    def _done(
        self,
        revision: int,
        kind: EventType,
        resource: str,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        parts: tuple[str, str],
    ) -> dict[str, Any]:
        """Record a write a server-side function made (object, event and notification)."""
        data = f"{parts[0]}{revision}{parts[1]}"
        self.changes.append(_Change(revision, kind, resource, namespace, name, data))
        return stamp(obj, revision)

    def _first(self, statement: str, **values: Any) -> Any:
        """The first row of a statement's result, or None."""
        if self._driver is not None:
            return self._sql[statement].run_driver(self._driver, **values).fetchone()
        return self._sql[statement].run(self.connection, **values).first()

    def _count(self, statement: str, **values: Any) -> int:
        """Run a statement that changes rows; how many it changed."""
        if self._driver is not None:
            return int(self._sql[statement].run_driver(self._driver, **values).rowcount)
        return int(self._sql[statement].run(self.connection, **values).rowcount)

    def _scalar(self, statement: str, **values: Any) -> Any:
        row = self._first(statement, **values)
        if row is None:
            raise RuntimeError(f"statement {statement} returned no row")
        return row[0]

    def _bump(self) -> int:
        """The next revision. Its row lock is held to commit, serialising object-writing transactions."""
        if self._one_statement:
            raise NotOneStatementError  # the general way takes several statements: not in autocommit
        return int(self._scalar("bump"))

    def _unbump(self) -> None:
        """Give back a revision a failed write took: this transaction still holds the counter's lock."""
        self._count("unbump")

    def _log(
        self, revision: int, kind: EventType, resource: str, namespace: str, name: str, data: str
    ) -> None:
        self._count(
            "event",
            e_revision=revision,
            e_type=kind,
            e_resource=resource,
            e_namespace=namespace,
            e_name=name,
            e_data=data,
        )
        self.changes.append(_Change(revision, kind, resource, namespace, name, data))
        self.notify_at_commit = True


def is_retryable(exc: BaseException) -> bool:
    """Whether the database aborted the transaction so that running it again may succeed."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES
