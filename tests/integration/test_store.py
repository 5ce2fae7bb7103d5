"""The object store and its watch hub, on SQLite and on a real PostgreSQL.

Every test that takes the ``store`` (or ``store_url``) fixture runs twice: on an SQLite file in the
test's temporary directory and on a fresh database of the session's private PostgreSQL server.
Asynchronous parts run inside ``asyncio.run`` (no pytest-asyncio); waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmlink.store.errors import (
    AlreadyExistsError,
    ConflictError,
    ExpiredError,
    NotFoundError,
)
from slurmlink.store.events import Event
from slurmlink.store.hub import Subscription, WatchHub
from slurmlink.store.sql import SqlStore
from support.server import ServerProcess

NS = "default"

# ---- fixtures and helpers ------------------------------------------------------------------------


def thing(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Thing",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].pop("resourceVersion", None)
    return out


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run a coroutine to completion in a fresh event loop, with an overall deadline."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def collect(sub: Subscription, count: int, timeout: float = 10.0) -> list[Event]:
    """The next ``count`` events of ``sub`` (fewer only if it closes); fails after ``timeout``."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(events)} of {count} events: {[e.revision for e in events]}")
        event = await sub.next(timeout=remaining)
        if event is None:
            if sub.closed:
                break
            continue
        events.append(event)
    return events


def everything(_event: Event) -> bool:
    return True


def assert_gapless(store: SqlStore, after: int) -> list[Event]:
    """The event log after ``after`` holds exactly one event per revision up to the current one."""
    events = store.events_after(after, limit=1_000_000)
    assert [e.revision for e in events] == list(range(after + 1, store.current_revision() + 1))
    return events


# ---- CRUD, revisions, compare-and-swap ------------------------------------------------------------


def test_create_get_list_update_delete(store: SqlStore) -> None:
    original = thing("a", size=1)
    created = store.create("things", NS, "a", original)
    assert rv(created) == store.current_revision() == 1
    assert "resourceVersion" not in original["metadata"], "the caller's object is not modified"
    assert store.get("things", NS, "a") == created
    assert store.get("things", NS, "missing") is None

    items, revision = store.list("things", NS)
    assert items == [created]
    assert revision == 1

    changed = copy.deepcopy(created)
    changed["spec"]["size"] = 2
    updated = store.update("things", NS, "a", changed, rv(created))
    assert rv(updated) == 2
    assert updated["spec"] == {"size": 2}
    assert store.get("things", NS, "a") == updated

    deleted = store.delete("things", NS, "a")
    assert store.get("things", NS, "a") is None
    assert store.list("things", NS) == ([], 3)
    assert without_rv(deleted) == without_rv(updated)


def test_create_existing_is_already_exists_and_consumes_no_revision(store: SqlStore) -> None:
    store.create("things", NS, "a", thing("a"))
    before = store.current_revision()
    with pytest.raises(AlreadyExistsError):
        store.create("things", NS, "a", thing("a", other=True))
    assert store.current_revision() == before
    assert store.get("things", NS, "a") == {
        **thing("a"),
        "metadata": {"name": "a", "namespace": NS, "resourceVersion": "1"},
    }
    # The same name is a different key in another namespace or resource.
    store.create("things", "other", "a", thing("a", "other"))
    store.create("widgets", NS, "a", thing("a"))
    assert_gapless(store, 0)


def test_compare_and_swap_rejects_a_stale_revision(store: SqlStore) -> None:
    first = store.create("things", NS, "a", thing("a", n=0))
    second = store.update("things", NS, "a", {**first, "spec": {"n": 1}}, rv(first))
    before = store.current_revision()

    stale = {**first, "spec": {"n": 99}}
    with pytest.raises(ConflictError):
        store.update("things", NS, "a", stale, rv(first))
    assert "resourceVersion" in stale["metadata"] and rv(stale) == rv(first), "caller's copy untouched"
    with pytest.raises(ConflictError):
        store.delete("things", NS, "a", expected_revision=rv(first))
    with pytest.raises(NotFoundError):
        store.update("things", NS, "missing", thing("missing"), 1)
    with pytest.raises(NotFoundError):
        store.delete("things", NS, "missing")

    assert store.get("things", NS, "a") == second
    assert store.current_revision() == before, "failed writes consume no revision"
    assert_gapless(store, 0)


def test_delete_returns_the_last_state_stamped_with_a_new_revision(store: SqlStore) -> None:
    created = store.create("things", NS, "a", thing("a", keep="me"))
    store.create("things", NS, "b", thing("b"))
    deleted = store.delete("things", NS, "a", expected_revision=rv(created))
    assert rv(deleted) == store.current_revision() == 3
    assert without_rv(deleted) == without_rv(created)
    (event,) = store.events_after(2)
    assert (event.type, event.revision, event.name, event.object) == ("DELETED", 3, "a", deleted)
    with pytest.raises(NotFoundError):
        store.delete("things", NS, "a")


def test_one_global_revision_across_kinds_and_namespaces(store: SqlStore) -> None:
    revisions = []
    for i in range(4):
        for resource in ("things", "widgets", "dataworkflowservices.github.io/workflows"):
            for namespace in ("default", "slurm", ""):
                name = f"o{i}"
                revisions.append(rv(store.create(resource, namespace, name, thing(name, namespace))))
    obj = store.get("widgets", "slurm", "o0")
    assert obj is not None
    revisions.append(rv(store.update("widgets", "slurm", "o0", obj, rv(obj))))
    revisions.append(rv(store.delete("things", "", "o3")))
    assert revisions == list(range(1, len(revisions) + 1))
    assert store.current_revision() == len(revisions)
    # A revision is never reused, not even after compaction dropped the whole log.
    store.compact(0)
    assert rv(store.create("things", NS, "after", thing("after"))) == len(revisions) + 1


def test_list_is_one_snapshot_consistent_with_its_revision(store: SqlStore) -> None:
    store.create("things", "a", "x", thing("x", "a"))
    store.create("things", "b", "y", thing("y", "b"))
    store.create("widgets", "a", "z", thing("z", "a"))
    items, revision = store.list("things")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items] == [("a", "x"), ("b", "y")]
    assert revision == 3
    assert [o["metadata"]["name"] for o in store.list("things", "b")[0]] == ["y"]

    # Under concurrent writes every list is a snapshot: exactly the objects created up to its revision.
    base = store.current_revision()
    total = 150
    done = threading.Event()
    failures: list[str] = []

    def writer() -> None:
        try:
            for i in range(total):
                store.create("items", NS, f"i{i:04d}", thing(f"i{i:04d}"))
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    lists = 0
    while not done.is_set() or lists == 0:
        items, revision = store.list("items", NS)
        lists += 1
        revs = sorted(rv(o) for o in items)
        if revs != list(range(base + 1, revision + 1)):
            failures.append(f"list at {revision} holds revisions {revs[:3]}...{revs[-3:]}")
    thread.join()
    assert not failures, failures[:3]
    assert len(store.list("items", NS)[0]) == total


def test_events_after_in_order_with_content(store: SqlStore) -> None:
    a = store.create("things", NS, "a", thing("a"))
    b = store.create("widgets", "slurm", "b", thing("b", "slurm"))
    a2 = store.update("things", NS, "a", {**a, "spec": {"v": 2}}, rv(a))
    gone = store.delete("widgets", "slurm", "b")
    events = store.events_after(0)
    assert [(e.revision, e.type, e.resource, e.namespace, e.name) for e in events] == [
        (1, "ADDED", "things", NS, "a"),
        (2, "ADDED", "widgets", "slurm", "b"),
        (3, "MODIFIED", "things", NS, "a"),
        (4, "DELETED", "widgets", "slurm", "b"),
    ]
    assert [e.object for e in events] == [a, b, a2, gone]
    assert all(rv(e.object) == e.revision for e in events)
    assert [e.revision for e in store.events_after(2)] == [3, 4]
    assert [e.revision for e in store.events_after(0, limit=3)] == [1, 2, 3]
    assert store.events_after(4) == []
    assert store.events_after(100) == []


def test_compaction_drops_old_events_and_expires_older_starts(store: SqlStore) -> None:
    for i in range(10):
        store.create("things", NS, f"o{i}", thing(f"o{i}"))
    assert store.compacted_revision() == 0
    assert store.compact(retain=4) == 6
    assert store.compacted_revision() == 6
    assert [e.revision for e in store.events_after(6)] == [7, 8, 9, 10]
    with pytest.raises(ExpiredError) as info:
        store.events_after(5)
    assert (info.value.requested, info.value.compacted) == (5, 6)
    assert "too old resource version" in str(info.value)
    # The point only moves forward; objects are untouched by compaction.
    assert store.compact(retain=100) == 6
    assert store.compacted_revision() == 6
    assert len(store.list("things", NS)[0]) == 10
    # A second store (another replica) sees the same compaction point and never lowers it.
    other = SqlStore(store.url)
    try:
        assert other.compacted_revision() == 6
        store.create("things", NS, "late", thing("late"))
        assert other.compact(retain=2) == 9
        assert store.compact(retain=4) == 9
        assert store.compacted_revision() == 9
    finally:
        other.close()


def test_committed_write_survives_a_failing_commit_listener(store: SqlStore) -> None:
    seen: list[Event] = []

    def broken(_event: Event) -> None:
        raise RuntimeError("listener bug")

    store.add_commit_listener(broken)
    store.add_commit_listener(seen.append)
    created = store.create("things", NS, "a", thing("a"))
    assert store.get("things", NS, "a") == created
    assert [e.revision for e in seen] == [1]
    # Listeners get their own copy: mutating what the caller got back does not change the event.
    created["spec"]["mutated"] = True
    assert seen[0].object["spec"] == {}
    store.remove_commit_listener(broken)
    store.remove_commit_listener(seen.append)


# ---- concurrency ---------------------------------------------------------------------------------


def test_concurrent_compare_and_swap_loses_no_update(store: SqlStore) -> None:
    """8 threads on two store instances (two replicas) increment one counter with CAS retries."""
    threads, per_thread = 8, 25
    other = SqlStore(store.url)
    stores = [store, other]
    store.create("counters", NS, "c", thing("c", count=0))
    base = store.current_revision()
    conflicts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        st = stores[index % 2]
        try:
            start.wait()
            done = 0
            while done < per_thread:
                current = st.get("counters", NS, "c")
                assert current is not None
                new = copy.deepcopy(current)
                new["spec"]["count"] += 1
                new["spec"]["by"] = index
                try:
                    st.update("counters", NS, "c", new, rv(current))
                except ConflictError:
                    conflicts[index] += 1
                    continue
                done += 1
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    other.close()
    assert not errors, errors
    total = threads * per_thread
    final = store.get("counters", NS, "c")
    assert final is not None
    assert final["spec"]["count"] == total
    assert rv(final) == base + total == store.current_revision()
    events = assert_gapless(store, base)
    assert [e.object["spec"]["count"] for e in events] == list(range(1, total + 1))
    assert all(e.type == "MODIFIED" for e in events)
    per_writer = [sum(1 for e in events if e.object["spec"]["by"] == i) for i in range(threads)]
    assert per_writer == [per_thread] * threads


# ---- watch hub -----------------------------------------------------------------------------------


def test_hub_replays_from_a_past_revision_then_goes_live(store: SqlStore) -> None:
    written = [store.create("things", NS, f"o{i}", thing(f"o{i}")) for i in range(5)]

    async def main() -> None:
        hub = WatchHub(store, poll_interval=3600)
        await hub.start()
        try:
            sub = await hub.subscribe(rv(written[1]), everything)
            replayed = await collect(sub, 3)
            assert [e.object for e in replayed] == written[2:]
            live = store.update("things", NS, "o0", {**written[0], "spec": {"x": 1}}, rv(written[0]))
            (event,) = await collect(sub, 1)
            assert (event.type, event.revision, event.object) == ("MODIFIED", rv(live), live)
            gone = store.delete("things", NS, "o1")
            (event,) = await collect(sub, 1)
            assert (event.type, event.object) == ("DELETED", gone)
            # Only the local commit path delivered these (no poll in an hour).
            assert hub.revision == store.current_revision()
        finally:
            await hub.stop()
        assert sub.closed and await sub.next(timeout=1) is None

    run(main())


def test_hub_subscription_from_none_sees_only_future_events(store: SqlStore) -> None:
    for i in range(3):
        store.create("things", NS, f"old{i}", thing(f"old{i}"))

    async def main() -> None:
        hub = WatchHub(store, poll_interval=3600)
        await hub.start()
        try:
            store.create("things", NS, "before", thing("before"))
            await wait_until(lambda: hub.revision == 4, what="hub at revision 4")
            sub = await hub.subscribe(None, everything)
            new = store.create("things", NS, "new", thing("new"))
            (event,) = await collect(sub, 1)
            assert (event.revision, event.name, event.object) == (5, "new", new)
        finally:
            await hub.stop()

    run(main())


def test_hub_filter(store: SqlStore) -> None:
    async def main() -> None:
        hub = WatchHub(store, poll_interval=3600)
        await hub.start()
        try:
            sub = await hub.subscribe(0, lambda e: e.resource == "widgets" and e.namespace == "slurm")
            for i in range(6):
                store.create("things", "slurm", f"t{i}", thing(f"t{i}", "slurm"))
                store.create("widgets", NS if i % 2 else "slurm", f"w{i}", thing(f"w{i}"))
            store.create("widgets", "slurm", "last", thing("last"))
            events = await collect(sub, 4)
            assert [e.name for e in events] == ["w0", "w2", "w4", "last"]
            assert [e.revision for e in events] == sorted(e.revision for e in events)
        finally:
            await hub.stop()

    run(main())


def _spy(store: SqlStore, method: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The arguments of each call of ``store.<method>``, which still runs."""
    calls: list[tuple[Any, ...]] = []
    original = getattr(store, method)

    def spy(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(store, method, spy)
    return calls


def test_hub_serves_recent_history_from_its_ring(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(store, "events_after", monkeypatch)

    async def main() -> None:
        hub = WatchHub(store, ring_size=100, poll_interval=3600)
        await hub.start()
        try:
            written = [store.create("things", NS, f"o{i}", thing(f"o{i}")) for i in range(6)]
            await wait_until(lambda: hub.revision == 6, what="hub at revision 6")
            calls.clear()
            sub = await hub.subscribe(2, everything)
            assert [e.object for e in await collect(sub, 4)] == written[2:]
            assert calls == [], "history inside the ring needs no query"
        finally:
            await hub.stop()

    run(main())


def test_hub_reads_older_history_from_the_database(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(store, "events_after", monkeypatch)

    async def main() -> None:
        hub = WatchHub(store, ring_size=3, poll_interval=3600)
        await hub.start()
        try:
            written = [store.create("things", NS, f"o{i}", thing(f"o{i}")) for i in range(8)]
            await wait_until(lambda: hub.revision == 8, what="hub at revision 8")
            calls.clear()
            sub = await hub.subscribe(1, everything)
            assert [e.object for e in await collect(sub, 7)] == written[1:]
            assert calls and calls[0][0] == 1, "history older than the ring comes from the event log"
        finally:
            await hub.stop()

    run(main())


def test_hub_history_merges_with_concurrent_live_writes(store: SqlStore) -> None:
    """Replay from the database while another thread keeps writing: no gap, no duplicate."""
    for i in range(50):
        store.create("things", NS, f"pre{i}", thing(f"pre{i}"))

    async def main() -> None:
        hub = WatchHub(store, ring_size=4, poll_interval=3600)
        await hub.start()
        total = 200
        try:
            writer = threading.Thread(
                target=lambda: [store.create("things", NS, f"w{i}", thing(f"w{i}")) for i in range(total)]
            )
            writer.start()
            await wait_until(lambda: hub.revision >= 60, what="live writes flowing")
            sub = await hub.subscribe(0, everything)
            events = await collect(sub, 50 + total, timeout=30)
            await asyncio.to_thread(writer.join)
            assert [e.revision for e in events] == list(range(1, 50 + total + 1))
        finally:
            await hub.stop()

    run(main())


def test_hub_start_before_the_compaction_point_is_expired(store: SqlStore) -> None:
    for i in range(10):
        store.create("things", NS, f"o{i}", thing(f"o{i}"))
    point = store.compact(retain=3)
    assert point == 7

    async def main() -> None:
        hub = WatchHub(store, ring_size=100, poll_interval=3600)
        await hub.start()
        try:
            with pytest.raises(ExpiredError) as info:
                await hub.subscribe(point - 1, everything)
            assert (info.value.requested, info.value.compacted) == (point - 1, point)
            assert not hub._subs, "a refused subscription is not left registered"
            sub = await hub.subscribe(point, everything)
            assert [e.revision for e in await collect(sub, 3)] == [8, 9, 10]
        finally:
            await hub.stop()

    run(main())


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two store instances on one SQLite database, as two processes would have."""
    url = f"sqlite:///{tmp_path / 'two.db'}"
    mine, theirs = SqlStore(url), SqlStore(url)
    try:
        yield mine, theirs
    finally:
        mine.close()
        theirs.close()


def test_hub_that_falls_behind_compaction_resets_and_keeps_no_stale_ring(
    sqlite_pair: tuple[SqlStore, SqlStore],
) -> None:
    """SQLite, two store instances: the hub's store misses the other's writes until a poll."""
    mine, theirs = sqlite_pair

    async def main() -> None:
        hub = WatchHub(mine, ring_size=100, poll_interval=3600)
        await hub.start()
        try:
            for i in range(3):
                mine.create("things", NS, f"m{i}", thing(f"m{i}"))
            await wait_until(lambda: hub.revision == 3, what="hub at revision 3")
            sub = await hub.subscribe(None, everything)
            for i in range(5):
                theirs.create("things", NS, f"t{i}", thing(f"t{i}"))
            assert theirs.compact(retain=0) == 8
            hub.poke()
            await wait_until(lambda: sub.closed, what="watchers reset after the hub fell behind")
            assert hub.revision == 8
            # Its copy of every object starts again from the store: the other store's writes included.
            assert hub.latest("things", NS, "t4") == theirs.get("things", NS, "t4")
            assert [o["metadata"]["name"] for o in hub.objects("things")][-2:] == ["t3", "t4"]
            # Revision 1..3 are still in memory, 4..8 are gone: a watch from 1 must not get 2, 3 and
            # then silently continue after 8.
            with pytest.raises(ExpiredError):
                await hub.subscribe(1, everything)
            live = await hub.subscribe(8, everything)
            mine.create("things", NS, "after", thing("after"))
            assert [e.revision for e in await collect(live, 1)] == [9]
        finally:
            await hub.stop()

    run(main())


def test_sqlite_hub_polls_for_another_stores_writes_and_reads_the_log_only_then(
    sqlite_pair: tuple[SqlStore, SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, two store instances (as another process): the periodic poll delivers the other's
    writes; while nothing new is committed it reads the revision only, not the event log."""
    mine, theirs = sqlite_pair

    async def main() -> None:
        hub = WatchHub(mine, poll_interval=0.05)
        await hub.start()
        try:
            sub = await hub.subscribe(None, everything)
            reads = _spy(mine, "events_after", monkeypatch)
            theirs.create("things", NS, "t0", thing("t0"))
            (event,) = await collect(sub, 1)
            assert (event.type, event.object) == ("ADDED", theirs.get("things", NS, "t0"))
            settled = len(reads)
            assert settled >= 1
            polls = _spy(mine, "current_revision", monkeypatch)
            await wait_until(lambda: len(polls) >= 5, what="five polls with nothing new")
            assert len(reads) == settled
            theirs.create("things", NS, "t1", thing("t1"))
            (event,) = await collect(sub, 1)
            assert event.object["metadata"]["name"] == "t1" and len(reads) > settled
        finally:
            await hub.stop()

    run(main())


def test_hub_closes_a_subscriber_that_cannot_keep_up(store: SqlStore) -> None:
    async def main() -> None:
        hub = WatchHub(store, poll_interval=3600)
        await hub.start()
        try:
            slow = await hub.subscribe(None, everything, max_queue=3)
            fast = await hub.subscribe(None, everything)
            for i in range(10):
                store.create("things", NS, f"o{i}", thing(f"o{i}"))
            assert [e.revision for e in await collect(fast, 10)] == list(range(1, 11))
            assert slow.overflowed and slow.closed
            drained = []
            while (event := await slow.next(timeout=5)) is not None:
                drained.append(event.revision)
            assert drained == [1, 2, 3]
            assert slow not in hub._subs and fast in hub._subs
        finally:
            await hub.stop()

    run(main())


def test_hub_stops_promptly_even_with_a_wake_up_pending(store: SqlStore) -> None:
    """A wake-up coinciding with stop() must not swallow the cancellation (asyncio.wait_for did)."""

    async def main() -> None:
        for _ in range(3):
            hub = WatchHub(store, poll_interval=3600)
            await hub.start()
            sub = await hub.subscribe(None, everything)
            store.create("things", NS, f"o{store.current_revision()}", thing("o"))
            hub.poke()
            async with asyncio.timeout(5):
                await hub.stop()
            assert sub.closed

    run(main())


def test_subscription_next_does_not_swallow_cancellation(store: SqlStore) -> None:
    async def main() -> None:
        hub = WatchHub(store, poll_interval=3600)
        await hub.start()
        try:
            sub = await hub.subscribe(None, everything)
            reader = asyncio.create_task(sub.next(timeout=60))
            await asyncio.sleep(0)  # the reader is now waiting on the queue
            store.create("things", NS, "a", thing("a"))  # queues the event ...
            await asyncio.sleep(0)  # ... whose delivery is now scheduled
            reader.cancel()  # ... in the same loop iteration as this cancellation
            with pytest.raises(asyncio.CancelledError):
                await reader
            # The event was not lost with the cancelled read.
            (event,) = await collect(sub, 1)
            assert event.name == "a"
        finally:
            await hub.stop()

    run(main())


@pytest.mark.postgres
def test_postgres_replica_hub_is_woken_by_notify(postgres_dsn: str) -> None:
    """Another replica's hub (its poll an hour away) gets each write through LISTEN/NOTIFY."""
    first, second = SqlStore(postgres_dsn), SqlStore(postgres_dsn)
    latencies: list[float] = []

    async def main() -> None:
        hub_a = WatchHub(first, poll_interval=3600)
        hub_b = WatchHub(second, poll_interval=3600)
        await hub_a.start()
        await hub_b.start()
        try:
            await wait_until(hub_b.listening.is_set, what="replica B listening")
            await wait_until(hub_a.listening.is_set, what="replica A listening")
            sub_b = await hub_b.subscribe(None, everything)
            sub_a = await hub_a.subscribe(None, everything)
            for i in range(20):
                started = time.monotonic()
                written = await asyncio.to_thread(first.create, "things", NS, f"o{i}", thing(f"o{i}"))
                (event,) = await collect(sub_b, 1, timeout=5)
                latencies.append(time.monotonic() - started)
                assert (event.type, event.object) == ("ADDED", written)
            # Writes from both replicas interleave; each hub delivers all of them, in order, once.
            for i in range(10):
                st = second if i % 2 else first
                await asyncio.to_thread(st.create, "things", "mixed", f"x{i}", thing(f"x{i}", "mixed"))
            expected = list(range(1, 31))
            assert [e.revision for e in await collect(sub_b, 10)] == expected[20:]
            assert [e.revision for e in await collect(sub_a, 30)] == expected
        finally:
            await hub_a.stop()
            await hub_b.stop()

    try:
        run(main())
    finally:
        first.close()
        second.close()
    assert max(latencies) < 1.0, latencies


@pytest.mark.postgres
def test_postgres_writes_notify_only_while_another_hub_watches(postgres_dsn: str) -> None:
    """A lone server's writes send no NOTIFY (its hub has them from the commit listener); once a
    second hub registers, they do, and after it stops they no longer do."""
    import psycopg

    writer, other = SqlStore(postgres_dsn), SqlStore(postgres_dsn)
    listener = psycopg.connect(postgres_dsn.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    listener.execute("LISTEN slurmlink_events")

    def heard() -> list[str]:
        return [n.payload for n in listener.notifies(timeout=0.5)]

    async def main() -> None:
        own_hub = WatchHub(writer, poll_interval=3600)
        await own_hub.start()
        await wait_until(own_hub.listening.is_set, what="the writer's hub listening")
        try:
            lone = await asyncio.to_thread(writer.create, "things", NS, "alone", thing("alone"))
            assert await asyncio.to_thread(heard) == []
            other_hub = WatchHub(other, poll_interval=3600)
            await other_hub.start()
            await wait_until(other_hub.listening.is_set, what="the second hub listening")
            sub = await other_hub.subscribe(rv(lone), everything)
            seen = await asyncio.to_thread(writer.create, "things", NS, "watched", thing("watched"))
            assert await asyncio.to_thread(heard) == [f"{rv(seen)} {writer.origin}"]
            assert [e.object for e in await collect(sub, 1)] == [seen]
            # The second hub's own writes: the first hub watches too, so they are announced.
            theirs = await asyncio.to_thread(other.create, "things", NS, "theirs", thing("theirs"))
            assert await asyncio.to_thread(heard) == [f"{rv(theirs)} {other.origin}"]
            await other_hub.stop()
            await asyncio.to_thread(writer.create, "things", NS, "alone-again", thing("alone-again"))
            assert await asyncio.to_thread(heard) == []
        finally:
            await own_hub.stop()

    try:
        run(main())
    finally:
        listener.close()
        writer.close()
        other.close()


@pytest.mark.postgres
def test_postgres_brief_calls_run_on_the_loop_and_leave_it_while_a_lock_is_held(postgres_dsn: str) -> None:
    """``call_brief`` runs on the event loop; a write that has to wait for the revision counter (another
    process's transaction holds it) moves to a worker thread, and the loop keeps serving meanwhile."""
    import psycopg

    store = SqlStore(postgres_dsn)
    first = store.create("things", NS, "o", thing("o"))
    blocker = psycopg.connect(postgres_dsn.replace("postgresql+psycopg", "postgresql"))

    async def main() -> None:
        loop_thread = threading.get_ident()
        ran_on: list[int] = []

        def read() -> dict[str, Any] | None:
            ran_on.append(threading.get_ident())
            return store.get("things", NS, "o")

        assert await store.call_brief(read) == first
        assert ran_on[-1] != loop_thread  # no connection open yet: not made on the loop
        # Connections are opened in the background; then brief calls stay on the loop.
        await wait_until(lambda: store._loop_autocommit is not None and len(store._loop_autocommit._idle) > 0)
        ran_on.clear()
        assert await store.call_brief(read) == first
        assert ran_on == [loop_thread]  # no thread hop when nothing waits

        blocker.execute("UPDATE counters SET revision = revision WHERE id = 1")  # holds the row lock

        def write() -> dict[str, Any]:
            ran_on.append(threading.get_ident())
            return store.update("things", NS, "o", {**first, "spec": {"x": 1}}, rv(first))

        pending = asyncio.create_task(store.call_brief(write))
        ticks = 0
        while len(ran_on) < 3:  # the attempt on the loop, then the one in a thread
            await asyncio.sleep(0.01)
            ticks += 1
        for _ in range(20):  # the loop keeps running while the write waits in its thread
            await asyncio.sleep(0.01)
            ticks += 1
        assert not pending.done() and ticks >= 21
        assert ran_on[1] == loop_thread and ran_on[2] != loop_thread
        await asyncio.to_thread(blocker.commit)
        written = await pending
        assert written["spec"] == {"x": 1} and rv(written) == rv(first) + 1
        assert store.get("things", NS, "o") == written

    try:
        run(main())
    finally:
        blocker.close()
        store.close()


def _pooled_connection(store: SqlStore) -> Any:
    """The connection the store's next single statement off the event loop runs on."""
    assert store._autocommit is not None
    return store._autocommit._idle[-1][0]


@pytest.mark.postgres
def test_postgres_statements_are_prepared_again_on_a_session_that_dropped_them(postgres_dsn: str) -> None:
    """The hot statements are prepared once per connection; a session that lost them (``DEALLOCATE
    ALL``, as a pooler's reset does) gets them prepared again instead of failing the write."""
    store = SqlStore(postgres_dsn)
    try:
        first = store.create("things", NS, "p", thing("p"))
        conn = _pooled_connection(store)
        names = {r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()}
        assert "slurmlink_fn_create" in names
        conn.execute("DEALLOCATE ALL")
        second = store.create("things", NS, "q", thing("q"))  # the same statement, on the same session
        assert _pooled_connection(store) is conn and rv(second) == rv(first) + 1
        assert store.get("things", NS, "q") == second
        updated = store.update("things", NS, "p", {**first, "spec": {"n": 1}}, rv(first))
        assert store.get("things", NS, "p") == updated and rv(updated) == rv(second) + 1
        deleted = store.delete("things", NS, "p", rv(updated))
        assert deleted["spec"] == {"n": 1} and rv(deleted) == rv(updated) + 1
        assert store.get("things", NS, "p") is None
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_a_pooled_connection_the_server_closed_is_replaced(postgres_dsn: str) -> None:
    """A pooled connection whose backend went away (a database restart, an administrator's
    ``pg_terminate_backend``) fails at most one call, as store unavailable, and is not used again."""
    import psycopg

    from slurmlink.store.errors import UnavailableError

    store = SqlStore(postgres_dsn)
    admin = psycopg.connect(postgres_dsn.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    try:
        first = store.create("things", NS, "t", thing("t"))
        conn = _pooled_connection(store)
        pid = conn.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the backend did not go away"
            time.sleep(0.01)
        # Either the pool finds it dead before use, or the call on it fails as store unavailable.
        with contextlib.suppress(UnavailableError):
            assert store.get("things", NS, "t") == first
        assert conn.closed
        assert store.get("things", NS, "t") == first
        updated = store.update("things", NS, "t", {**first, "spec": {"n": 2}}, rv(first))
        assert rv(updated) == rv(first) + 1
    finally:
        admin.close()
        store.close()


# ---- through the API -----------------------------------------------------------------------------


def test_http_watch_before_the_compaction_point_is_410(store_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[serve]\ncompaction_retain = 1\ncompaction_interval = 0.1\n")
    server = ServerProcess(
        tmp_path / "state", store=store_url, extra_args=("--config", str(config), "--no-controllers")
    )
    observer = SqlStore(store_url)
    try:
        with server, server.client() as client:
            deadline = time.monotonic() + 20
            while observer.compacted_revision() < 2:
                assert time.monotonic() < deadline, "the server never compacted"
                time.sleep(0.05)
            r = client.get(
                "/api/v1/namespaces", params={"watch": "1", "resourceVersion": "1", "timeoutSeconds": "5"}
            )
            assert r.status_code == 200
            frame = json.loads(r.content.splitlines()[0])
            assert frame["type"] == "ERROR"
            status = frame["object"]
            assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
            assert status["message"].startswith("too old resource version: 1 ("), status["message"]
    finally:
        observer.close()
