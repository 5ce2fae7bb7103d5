"""Schema migrations (Alembic tracks) on SQLite and a real PostgreSQL.

The upgrade test replays the layout releases before Alembic wrote (``data/store_v1.sql``, frozen) with
data in it, and checks that the store adopts that database and serves the data unchanged.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from slurmlink import jsonutil
from slurmlink.store import migrations
from slurmlink.store.errors import SchemaVersionError
from slurmlink.store.sql import SqlStore

NS = "default"
V1_DDL = Path(__file__).parent / "data" / "store_v1.sql"


def thing(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Thing", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def alembic_versions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def legacy_versions(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(int(v) for v in conn.execute(sa.text("SELECT version FROM schema_version")).scalars())


def test_a_fresh_store_is_at_every_track_head_and_migrating_again_does_nothing(store: SqlStore) -> None:
    heads = migrations.heads()
    assert set(heads) == set(migrations.TRACKS) == {"objects", "bank"}
    assert alembic_versions(store.engine) == sorted(heads.values())
    # Releases before Alembic read max(schema_version): 2 makes them refuse this layout.
    assert legacy_versions(store.engine) == [1, 2]
    created = store.create("things", NS, "a", thing("a"))
    assert migrations.migrate(store.engine) == heads
    assert migrations.migrate(store.engine) == heads
    reopened = SqlStore(store.url)
    try:
        assert reopened.get("things", NS, "a") == created
        assert rv(reopened.create("things", NS, "b", thing("b"))) == 2
        assert alembic_versions(reopened.engine) == sorted(heads.values())
        assert legacy_versions(reopened.engine) == [1, 2]
    finally:
        reopened.close()


def _v1_database(url: str) -> dict[str, Any]:
    """A database as the pre-Alembic release left it: two live objects, a deletion, one compaction."""
    a3 = {**thing("a", n=3), "metadata": {"name": "a", "namespace": NS, "resourceVersion": "3"}}
    b2 = {**thing("b"), "metadata": {"name": "b", "namespace": NS, "resourceVersion": "2"}}
    c5 = {**thing("c"), "metadata": {"name": "c", "namespace": "other", "resourceVersion": "5"}}
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for chunk in V1_DDL.read_text().split(";"):
                statement = "\n".join(line for line in chunk.splitlines() if not line.startswith("--"))
                if statement.strip():
                    conn.exec_driver_sql(statement)
            objects = [("things", NS, "a", 3, a3), ("things", NS, "b", 2, b2)]
            for resource, namespace, name, revision, obj in objects:
                conn.execute(
                    sa.text(
                        "INSERT INTO objects (resource, namespace, name, revision, data) "
                        "VALUES (:r, :ns, :n, :rev, :d)"
                    ),
                    {
                        "r": resource,
                        "ns": namespace,
                        "n": name,
                        "rev": revision,
                        "d": jsonutil.dumps_str(obj),
                    },
                )
            events = [
                (3, "MODIFIED", NS, "a", a3),
                (4, "ADDED", "other", "c", c5),
                (5, "DELETED", "other", "c", c5),
            ]
            for revision, kind, namespace, name, obj in events:
                conn.execute(
                    sa.text(
                        "INSERT INTO events (revision, type, resource, namespace, name, data) "
                        "VALUES (:rev, :t, 'things', :ns, :n, :d)"
                    ),
                    {"rev": revision, "t": kind, "ns": namespace, "n": name, "d": jsonutil.dumps_str(obj)},
                )
            conn.execute(sa.text("UPDATE counters SET revision = 5, compacted = 2"))
    finally:
        engine.dispose()
    return {"a": a3, "b": b2, "c": c5}


def test_a_database_written_before_alembic_is_adopted_with_its_data(store_url: str) -> None:
    old = _v1_database(store_url)
    store = SqlStore(store_url)
    try:
        assert alembic_versions(store.engine) == sorted(migrations.heads().values())
        assert legacy_versions(store.engine) == [1, 2]
        assert store.current_revision() == 5
        assert store.compacted_revision() == 2
        assert store.get("things", NS, "a") == old["a"]
        assert store.list("things", NS) == ([old["a"], old["b"]], 5)
        assert [(e.revision, e.type, e.name) for e in store.events_after(2)] == [
            (3, "MODIFIED", "a"),
            (4, "ADDED", "c"),
            (5, "DELETED", "c"),
        ]
        assert store.events_after(2)[0].object == old["a"]
        updated = store.update("things", NS, "a", thing("a", n=4), 3)
        assert rv(updated) == 6
        assert [e.revision for e in store.events_after(5)] == [6]
    finally:
        store.close()
    reopened = SqlStore(store_url)  # and opening it again changes nothing
    try:
        assert reopened.get("things", NS, "a") == updated
        assert legacy_versions(reopened.engine) == [1, 2]
    finally:
        reopened.close()


def test_a_database_from_a_newer_release_is_refused_untouched(store: SqlStore) -> None:
    store.create("things", NS, "a", thing("a"))
    supported = int(migrations.heads()["objects"].rsplit("_", 1)[1])
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE alembic_version SET version_num = 'objects_0099' WHERE version_num LIKE 'objects_%'"
            )
        )
    with pytest.raises(SchemaVersionError) as info:
        SqlStore(store.url)
    assert (info.value.found, info.value.supported) == (99, supported)
    assert "upgrade slurmlink" in str(info.value)
    assert alembic_versions(store.engine) == sorted([migrations.heads()["bank"], "objects_0099"])
    assert store.get("things", NS, "a") is not None
    assert store.current_revision() == 1


def test_a_track_this_release_does_not_know_is_refused(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('futurebank_0001')"))
    with pytest.raises(SchemaVersionError) as info:
        SqlStore(store.url)
    assert (info.value.found, info.value.supported) == (1, 0)


def test_replicas_starting_at_once_migrate_once(store_url: str) -> None:
    """Several stores open one empty database at the same moment: one migrates, the others wait."""
    opened: list[SqlStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)

    def start() -> None:
        try:
            barrier.wait()
            opened.append(SqlStore(store_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(opened) == 4
        assert alembic_versions(opened[0].engine) == sorted(migrations.heads().values())
        assert legacy_versions(opened[0].engine) == [1, 2]
        revisions = [rv(s.create("things", NS, f"x{i}", thing(f"x{i}"))) for i, s in enumerate(opened)]
        assert revisions == [1, 2, 3, 4]
    finally:
        for s in opened:
            s.close()


def test_a_store_opens_while_another_connection_creates_the_database(tmp_path: Path) -> None:
    """A fresh SQLite file is switched to WAL by whoever opens it first; a writer committing at that
    moment makes SQLite refuse the switch at once ("database is locked"): the store tries again."""
    path = tmp_path / "fresh.db"
    creator = sqlite3.connect(path, isolation_level=None, timeout=30)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE unrelated (x)")
    opened: list[SqlStore] = []
    failed: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(SqlStore(f"sqlite:///{path}"))
        except BaseException as exc:
            failed.append(exc)

    opener = threading.Thread(target=open_store)
    opener.start()
    # Let the opener reach the lock before the commit (the assertions hold whatever the timing; without
    # the retry, this order failed every time).
    time.sleep(1.0)
    creator.execute("COMMIT")
    creator.close()
    opener.join(60)
    assert not failed, failed
    (store,) = opened
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert store.current_revision() == 0
    finally:
        store.close()


def test_the_bank_track_upgrades_a_ledger_in_place(store: SqlStore) -> None:
    """A ledger written at bank_0001 (before rollover) keeps its books through bank_0002."""
    from alembic import command

    from slurmlink.bank.ledger import Actor, Ledger

    ledger = Ledger(store, "c1")
    ledger.create_account("lab")
    ledger.grant("lab", Decimal(10), key="g", actor=Actor("admin"))
    with store.engine.begin() as conn:
        command.downgrade(migrations.config(conn), "bank_0001")
        assert "rollover_percent" not in {c["name"] for c in sa.inspect(conn).get_columns("bank_allocations")}
    assert migrations.migrate(store.engine)["bank"] == migrations.heads()["bank"]
    [allocation] = ledger.allocations("lab")
    assert allocation["available"] == "10.00"
    assert ledger.balance("lab").available == Decimal(10) and ledger.verify() == []


def test_the_objects_track_upgrades_from_objects_0004_and_writes_keep_their_answers(store: SqlStore) -> None:
    """A database at objects_0004 is brought to the head with its objects served unchanged; on
    PostgreSQL the head's write functions (which take the revision first) still refuse a stale or a
    missing object and an existing key without using up a revision."""
    from alembic import command

    from slurmlink.store.errors import AlreadyExistsError, ConflictError, NotFoundError

    a = store.create("things", NS, "a", thing("a", n=1))
    with store.engine.begin() as conn:
        command.downgrade(migrations.config(conn), "objects_0004")
    assert "objects_0004" in alembic_versions(store.engine)
    b = store.update("things", NS, "a", thing("a", n=2), rv(a))  # the old functions still work
    assert migrations.migrate(store.engine)["objects"] == migrations.heads()["objects"]
    reopened = SqlStore(store.url)
    try:
        assert reopened.get("things", NS, "a") == b
        with pytest.raises(ConflictError):
            reopened.update("things", NS, "a", thing("a", n=3), rv(a))
        with pytest.raises(NotFoundError):
            reopened.update("things", NS, "missing", thing("missing"), rv(b))
        with pytest.raises(AlreadyExistsError):
            reopened.create("things", NS, "a", thing("a"))
        with pytest.raises(ConflictError):
            reopened.delete("things", NS, "a", rv(a))
        with pytest.raises(NotFoundError):
            reopened.delete("things", NS, "missing")
        assert reopened.current_revision() == rv(b)  # none of the refused writes took a revision
        c = reopened.update("things", NS, "a", thing("a", n=3), rv(b))
        assert rv(c) == rv(b) + 1 and reopened.get("things", NS, "a") == c
        gone = reopened.delete("things", NS, "a", rv(c))
        assert rv(gone) == rv(c) + 1 and gone["spec"] == {"n": 3}
        assert [e.type for e in reopened.events_after(rv(b))] == ["MODIFIED", "DELETED"]
    finally:
        reopened.close()
