"""The store's unit of work on SQLite and a real PostgreSQL: objects and a relational table together.

The ``store`` fixture (tests/integration/conftest.py) runs each test on both databases. The ledger
table stands in for the relational tables the bank and the job bridge keep beside the objects.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from slurmlink.store.errors import AlreadyExistsError, ConflictError, NotFoundError
from slurmlink.store.events import Event
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from slurmlink.store.transaction import Transaction

NS = "default"

ledger_metadata = sa.MetaData()
ledger = sa.Table(
    "test_ledger",
    ledger_metadata,
    sa.Column("account", sa.String(50), primary_key=True),
    sa.Column("balance", sa.Integer, nullable=False),
)


@pytest.fixture
def bank(store: SqlStore) -> Iterator[SqlStore]:
    """The store with a relational table beside the objects, holding accounts a and b."""
    ledger_metadata.create_all(store.engine)
    with store.engine.begin() as conn:
        conn.execute(ledger.insert(), [{"account": "a", "balance": 100}, {"account": "b", "balance": 100}])
    yield store


def thing(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Thing", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def balances(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {r.account: r.balance for r in conn.execute(sa.select(ledger))}


def record(store: SqlStore) -> list[Event]:
    seen: list[Event] = []
    store.add_commit_listener(seen.append)
    return seen


def test_objects_and_a_relational_table_commit_together_in_revision_order(bank: SqlStore) -> None:
    old = bank.create("things", NS, "old", thing("old"))
    doomed = bank.create("things", NS, "doomed", thing("doomed"))
    base = bank.current_revision()
    seen = record(bank)

    def body(tx: Transaction) -> list[dict[str, Any]]:
        created = tx.create("things", NS, "new", thing("new", n=1))
        assert tx.get("things", NS, "new") == created  # the transaction sees its own writes
        updated = tx.update("things", NS, "old", thing("old", n=2), rv(old))
        deleted = tx.delete("things", NS, "doomed", rv(doomed))
        tx.connection.execute(
            ledger.update().where(ledger.c.account == "a").values(balance=ledger.c.balance - 7)
        )
        assert seen == [], "listeners must hear of a transaction only after it committed"
        return [created, updated, deleted]

    created, updated, deleted = bank.run_transaction(body)
    assert [rv(created), rv(updated), rv(deleted)] == [base + 1, base + 2, base + 3]
    assert bank.current_revision() == base + 3
    assert balances(bank) == {"a": 93, "b": 100}
    assert bank.get("things", NS, "new") == created
    assert bank.get("things", NS, "old") == updated
    assert bank.get("things", NS, "doomed") is None
    events = bank.events_after(base)
    assert [(e.revision, e.type, e.name) for e in events] == [
        (base + 1, "ADDED", "new"),
        (base + 2, "MODIFIED", "old"),
        (base + 3, "DELETED", "doomed"),
    ]
    assert [e.object for e in events] == [created, updated, deleted]
    assert seen == events


def test_a_failure_mid_transaction_leaves_nothing_and_no_events(bank: SqlStore) -> None:
    kept = bank.create("things", NS, "kept", thing("kept", n=1))
    base = bank.current_revision()
    seen = record(bank)

    class Boom(Exception):
        pass

    def body(tx: Transaction) -> None:
        tx.create("things", NS, "new", thing("new"))
        tx.update("things", NS, "kept", thing("kept", n=2), rv(kept))
        tx.connection.execute(ledger.update().values(balance=0))
        # Nothing of it is visible outside the transaction before commit.
        assert bank.get("things", NS, "new") is None
        assert bank.events_after(base) == []
        raise Boom

    with pytest.raises(Boom):
        bank.run_transaction(body)
    assert bank.current_revision() == base
    assert bank.events_after(base) == []
    assert bank.get("things", NS, "new") is None
    assert bank.get("things", NS, "kept") == kept
    assert balances(bank) == {"a": 100, "b": 100}
    assert seen == []
    assert rv(bank.create("things", NS, "next", thing("next"))) == base + 1


def test_a_store_error_caught_inside_a_transaction_takes_no_revision(bank: SqlStore) -> None:
    a = bank.create("things", NS, "a", thing("a"))
    base = bank.current_revision()

    def body(tx: Transaction) -> dict[str, Any]:
        with pytest.raises(AlreadyExistsError):
            tx.create("things", NS, "a", thing("a"))
        with pytest.raises(ConflictError):
            tx.update("things", NS, "a", thing("a", n=1), rv(a) + 100)
        with pytest.raises(NotFoundError):
            tx.update("things", NS, "missing", thing("missing"), 1)
        with pytest.raises(NotFoundError):
            tx.delete("things", NS, "missing")
        return tx.create("things", NS, "b", thing("b"))

    b = bank.run_transaction(body)
    assert rv(b) == base + 1 == bank.current_revision()
    assert [e.name for e in bank.events_after(0)] == ["a", "b"]


def test_watchers_see_a_whole_transaction_in_order_and_nothing_of_a_failed_one(bank: SqlStore) -> None:
    async def scenario() -> list[Event]:
        hub = WatchHub(bank)
        await hub.start()
        try:
            sub = await hub.subscribe(None, lambda e: True)

            def failing(tx: Transaction) -> None:
                tx.create("things", NS, "ghost", thing("ghost"))
                raise RuntimeError("abandon")

            with pytest.raises(RuntimeError):
                await bank.call(bank.run_transaction, failing)

            def three(tx: Transaction) -> None:
                for name in ("x", "y", "z"):
                    tx.create("things", NS, name, thing(name))

            await bank.call(bank.run_transaction, three)
            events = []
            while len(events) < 3:
                event = await sub.next(timeout=10)
                assert event is not None, f"got only {events}"
                events.append(event)
            sub.close()
            return events
        finally:
            await hub.stop()

    events = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(e.revision, e.name) for e in events] == [(1, "x"), (2, "y"), (3, "z")]


# ---- PostgreSQL: concurrent transactions that the database aborts are run again ------------------


def _transfer_in_two_threads(store: SqlStore, body: Any, isolation: Any) -> list[int]:
    """Run ``body(tx, index, first_attempt)`` in two threads at once; returns the attempts each took."""
    attempts = [0, 0]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)

    def worker(index: int) -> None:
        def fn(tx: Transaction) -> None:
            attempts[index] += 1
            body(tx, index, attempts[index] == 1, barrier)

        try:
            store.run_transaction(fn, isolation=isolation)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return attempts


@pytest.mark.postgres
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_postgres_serialization_failure_is_retried(postgres_dsn: str, isolation: str) -> None:
    """Both read a balance, then both write it: one is aborted (40001), re-run, and both apply."""
    store = SqlStore(postgres_dsn)
    try:
        ledger_metadata.create_all(store.engine)
        with store.engine.begin() as conn:
            conn.execute(ledger.insert().values(account="a", balance=100))
        row = ledger.c.account == "a"

        def body(tx: Transaction, index: int, first: bool, barrier: threading.Barrier) -> None:
            balance = tx.connection.execute(sa.select(ledger.c.balance).where(row)).scalar_one()
            if first:
                barrier.wait()  # both have read the same balance before either writes
            tx.connection.execute(ledger.update().where(row).values(balance=balance - 10 * (index + 1)))
            tx.create("charges", NS, f"charge-{index}", thing(f"charge-{index}", amount=10 * (index + 1)))

        attempts = _transfer_in_two_threads(store, body, isolation)
        assert sorted(attempts)[0] == 1 and sorted(attempts)[1] >= 2, attempts
        assert balances(store) == {"a": 70}
        assert store.current_revision() == 2
        assert sorted(e.name for e in store.events_after(0)) == ["charge-0", "charge-1"]
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_deadlock_is_retried(postgres_dsn: str) -> None:
    """Two transfers lock the two accounts in opposite order: the deadlock victim (40P01) is re-run."""
    store = SqlStore(postgres_dsn)
    try:
        ledger_metadata.create_all(store.engine)
        with store.engine.begin() as conn:
            conn.execute(
                ledger.insert(), [{"account": "a", "balance": 100}, {"account": "b", "balance": 100}]
            )

        def body(tx: Transaction, index: int, first: bool, barrier: threading.Barrier) -> None:
            src, dst = ("a", "b") if index == 0 else ("b", "a")
            c = tx.connection
            c.execute(ledger.update().where(ledger.c.account == src).values(balance=ledger.c.balance - 5))
            if first:
                barrier.wait()  # each holds its first row before asking for the other's
            c.execute(ledger.update().where(ledger.c.account == dst).values(balance=ledger.c.balance + 5))
            tx.create("transfers", NS, f"t{index}", thing(f"t{index}", src=src, dst=dst))

        attempts = _transfer_in_two_threads(store, body, None)
        assert max(attempts) >= 2, attempts
        assert balances(store) == {"a": 100, "b": 100}
        assert sorted(e.name for e in store.events_after(0)) == ["t0", "t1"]
        assert [e.revision for e in store.events_after(0)] == [1, 2]
    finally:
        store.close()


def test_hub_delivers_concurrent_local_commits_in_revision_order(store: SqlStore) -> None:
    """Writers in parallel threads (PostgreSQL commits them concurrently): watchers get 1..N in order."""
    writers, per_writer = 6, 20

    async def scenario() -> list[Event]:
        hub = WatchHub(store)
        await hub.start()
        try:
            sub = await hub.subscribe(0, lambda e: True)

            def write(index: int) -> None:
                for i in range(per_writer):
                    store.create("things", NS, f"w{index}-{i}", thing(f"w{index}-{i}"))

            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            for t in threads:
                t.start()
            events: list[Event] = []
            while len(events) < writers * per_writer:
                event = await sub.next(timeout=30)
                assert event is not None, f"stopped after {len(events)} events"
                events.append(event)
            for t in threads:
                t.join(30)
            return events
        finally:
            await hub.stop()

    events = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert [e.revision for e in events] == list(range(1, writers * per_writer + 1))
    assert [e.object for e in events] == [e.object for e in store.events_after(0)]


def test_writes_of_an_object_that_cannot_be_cut_at_its_revision_take_the_general_path(
    store: SqlStore,
) -> None:
    """PostgreSQL sends objects cut at a placeholder; one that contains it is written another way."""
    from slurmlink.store.transaction import _PLACEHOLDER

    created = store.create("things", NS, "odd", thing("odd", text=_PLACEHOLDER))
    updated = store.update("things", NS, "odd", thing("odd", text=f"x{_PLACEHOLDER}"), rv(created))
    assert store.get("things", NS, "odd") == updated
    assert updated["spec"]["text"] == f"x{_PLACEHOLDER}"
    assert [(e.revision, e.object) for e in store.events_after(0)] == [(1, created), (2, updated)]


def test_delete_of_an_object_the_database_cannot_parse_as_jsonb_still_works(store: SqlStore) -> None:
    """PostgreSQL stamps a deleted object in SQL (jsonb), which rejects \\u0000; such a delete still works."""
    created = store.create("things", NS, "nul", thing("nul", text="a\u0000b"))
    deleted = store.delete("things", NS, "nul", rv(created))
    assert rv(deleted) == 2 and deleted["spec"]["text"] == "a\u0000b"
    assert store.get("things", NS, "nul") is None
    assert [(e.revision, e.type, e.object) for e in store.events_after(1)] == [(2, "DELETED", deleted)]
    plain = store.create("things", NS, "plain", thing("plain", n=1))
    gone = store.delete("things", NS, "plain")
    assert gone == {**plain, "metadata": {**plain["metadata"], "resourceVersion": "4"}}
    assert store.events_after(3)[0].object == gone
    with pytest.raises(NotFoundError):
        store.delete("things", NS, "plain")
