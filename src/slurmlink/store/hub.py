"""Fan-out of the event log to watchers, for one process.

One reader tails the event log and hands each event to every matching subscriber. Local commits are
pushed straight in (no extra query); writes by other processes (PostgreSQL replicas) arrive through
``LISTEN/NOTIFY`` or, as a safety net, a periodic poll, and are read from the log. A ring of recent
events serves watches that start a little in the past without touching the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from slurmlink.store.engine import libpq_dsn
from slurmlink.store.errors import ExpiredError
from slurmlink.store.events import Event
from slurmlink.store.sql import NOTIFY_CHANNEL, WATCHERS_TABLE, SqlStore

log = logging.getLogger(__name__)

EventFilter = Callable[[Event], bool]

#: How often a listening hub refreshes its watcher registration (writers ignore one unseen for 60 s).
WATCHER_REFRESH_SECONDS = 10.0

#: How long a local event may wait for a missing earlier revision before the log is read.
GAP_WAIT_SECONDS = 0.1


class Subscription:
    """A live stream of events after a start revision, as an async iterator."""

    def __init__(self, hub: WatchHub, matches: EventFilter, max_queue: int) -> None:
        self._hub = hub
        self._matches = matches
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_queue)
        self.overflowed = False
        self.closed = False
        self.last_revision = 0

    def _offer(self, event: Event) -> None:
        if self.closed or event.revision <= self.last_revision or not self._matches(event):
            return
        try:
            self._queue.put_nowait(event)
            self.last_revision = event.revision
        except asyncio.QueueFull:
            # A watcher too slow to keep up is closed; its client re-lists, as with the real API server.
            self.overflowed = True
            self._hub._unsubscribe(self)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when closed (``closed`` is then set) or ``timeout`` passed."""
        if self.closed and self._queue.empty():
            return None
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives together with an event, and the watcher's task would then never stop.
            async with asyncio.timeout(timeout):
                event = await self._queue.get()
        except TimeoutError:
            return None
        if event is None:
            self.closed = True
        return event

    def next_nowait(self) -> Event | None:
        """The next event if one is queued already, else None (``closed`` is set once it ended)."""
        try:
            event = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if event is None:
            self.closed = True
        return event

    def close(self) -> None:
        self._hub._unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self.next()
            if event is None:
                return
            yield event


class WatchHub:
    """Tails the store's event log and dispatches to subscriptions (asyncio, one per process)."""

    def __init__(self, store: SqlStore, *, ring_size: int = 8192, poll_interval: float = 1.0) -> None:
        self.store = store
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self._subs: set[Subscription] = set()
        self._last = 0
        self._poll_interval = poll_interval
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listen_stop = threading.Event()
        self._listen_thread: threading.Thread | None = None
        #: Local events that arrived ahead of a missing revision (PostgreSQL), by revision.
        self._pending: dict[int, Event] = {}
        self._gap_timer: asyncio.TimerHandle | None = None
        #: Set while the PostgreSQL LISTEN connection is established (tests and health checks).
        self.listening = threading.Event()
        self._loaded = False
        #: The newest dispatched state of every object, by resource, then (namespace, name): loaded
        #: when the hub starts and kept by the events it dispatches. The API server's first guess at an
        #: object it is about to change (a stale guess costs a failed compare-and-swap and a read) and
        #: its view for admission lookups, as Kubernetes' watch cache and admission informers are.
        self._latest: dict[str, dict[tuple[str, str], Event]] = {}

    @property
    def revision(self) -> int:
        """Newest revision this hub has dispatched."""
        return self._last

    def latest(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as of the newest event this hub dispatched for it; None if gone or not seen.

        Shared with watchers: read-only. Safe to call from any thread (one dict lookup).
        """
        event = self._latest.get(resource, {}).get((namespace, name))
        return event.object if event is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``resource`` (in ``namespace``) as of this hub's revision; read-only."""
        by_key = self._latest.get(resource, {})
        return [e.object for key, e in sorted(by_key.items()) if namespace is None or key[0] == namespace]

    def current(self, resource: str) -> bool:
        """Whether ``objects`` and ``latest`` of ``resource`` include every write of it this
        process's store made.

        Writes of other processes (replicas) arrive a moment later: callers accept that, as
        Kubernetes' admission plugins do with their informers.
        """
        return self._loaded and self._last >= self.store.local_revisions.get(resource, 0)

    def poke(self) -> None:
        """Read the event log now rather than at the next poll (call on the hub's event loop)."""
        if self._wake is not None:
            self._wake.set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._listen_stop.clear()
        # Listen before reading the starting revision: a commit in between then arrives as an
        # event (dispatched or seen as a gap that wakes a catch-up) instead of waiting for a poll.
        self.store.add_commit_listener(self._on_local_commit)
        objects, start = await anyio.to_thread.run_sync(self.store.snapshot)
        for event in objects:
            self._remember(event)
        self._loaded = True
        self._last = max(self._last, start)
        self._task = asyncio.create_task(self._run(), name="watch-hub")
        if self.store.is_postgres:
            self._listen_thread = threading.Thread(
                target=self._listen_postgres, name="pg-listen", daemon=True
            )
            self._listen_thread.start()

    async def stop(self) -> None:
        self.store.remove_commit_listener(self._on_local_commit)
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        self._listen_stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Wait without swallowing a cancellation of the caller itself (suppressing
            # CancelledError around ``await task`` would).
            await asyncio.wait({task})
        for sub in list(self._subs):
            self._unsubscribe(sub)
        thread, self._listen_thread = self._listen_thread, None
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join, 5.0)

    def end_watches(self) -> None:
        """End every subscription open now (the server is shutting down): each watch stream ends, as
        the Kubernetes API server ends its watches, and its client watches again, elsewhere or later.
        The hub keeps running for the in-process watchers until :meth:`stop`."""
        for sub in list(self._subs):
            self._unsubscribe(sub)

    async def subscribe(
        self, after: int | None, matches: EventFilter, max_queue: int = 10_000
    ) -> Subscription:
        """Events with revision > ``after`` (None: only future events). Raises ExpiredError."""
        sub = Subscription(self, matches, max_queue)
        snapshot = self._last
        sub.last_revision = max(snapshot, after or 0)
        self._subs.add(sub)
        if after is not None and after < snapshot:
            try:
                backlog = await self._history(after, snapshot)
            except BaseException:
                self._unsubscribe(sub)
                raise
            pending: list[Event] = []
            while not sub._queue.empty():
                item = sub._queue.get_nowait()
                if item is not None:
                    pending.append(item)
            sub.last_revision = after
            for event in backlog:
                sub._offer(event)
            for event in pending:
                sub._offer(event)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            sub.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                sub._queue.put_nowait(None)

    async def _history(self, after: int, upto: int) -> list[Event]:
        if self._ring and self._ring[0].revision <= after + 1:
            return [e for e in self._ring if after < e.revision <= upto]
        events: list[Event] = []
        cursor = after
        while cursor < upto:
            batch = await anyio.to_thread.run_sync(self.store.events_after, cursor)
            if not batch:
                break
            events.extend(e for e in batch if e.revision <= upto)
            cursor = batch[-1].revision
        return events

    def _on_local_commit(self, event: Event) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Always through the loop's queue: FIFO keeps revision order whichever thread wrote.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._accept, event)

    def _accept(self, event: Event) -> None:
        if event.revision <= self._last:
            return
        if event.revision == self._last + 1:
            self._dispatch(event)
            self._drain()
            return
        # A gap. On PostgreSQL, local writers commit in parallel threads and their events may arrive
        # out of order: hold this one until the missing ones arrive. Another replica's write in the
        # gap is announced by its NOTIFY; the timer only guards against a notification that is lost.
        self._pending[event.revision] = event
        if not self.store.is_postgres:
            self.poke()  # SQLite: local commits arrive in order, so another process wrote
        elif self._gap_timer is None and self._loop is not None:
            self._gap_timer = self._loop.call_later(GAP_WAIT_SECONDS, self._gap_expired)

    def _gap_expired(self) -> None:
        self._gap_timer = None
        if self._pending:
            self.poke()

    def _dispatch(self, event: Event) -> None:
        self._last = event.revision
        self._ring.append(event)
        self._remember(event)
        for sub in list(self._subs):
            sub._offer(event)

    def _remember(self, event: Event) -> None:
        by_key = self._latest.setdefault(event.resource, {})
        key = (event.namespace, event.name)
        if event.type == "DELETED":
            by_key.pop(key, None)
            return
        known = by_key.get(key)
        if known is None or known.revision < event.revision:
            by_key[key] = event

    def _drain(self) -> None:
        """Dispatch held events that are now next in line; drop those the log already delivered."""
        pending = self._pending
        while pending:
            event = pending.pop(self._last + 1, None)
            if event is None:
                break
            self._dispatch(event)
        if pending:
            for revision in [r for r in pending if r <= self._last]:
                del pending[revision]

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on Python 3.11 it swallows a cancel that coincides with a wake-up,
                # and stop() then waited forever for this loop.
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
            except ExpiredError:
                log.warning("watch hub fell behind compaction; resetting watchers")
                try:
                    objects, current = await anyio.to_thread.run_sync(self.store.snapshot)
                except Exception:  # the next round meets ExpiredError again and retries
                    log.exception("watch hub could not read the current revision; retrying")
                    continue
                # All at once (no await in between), so nobody sees closed watchers with the old
                # revision. The ring must stay one contiguous run of revisions: a watch served from it
                # after the jump would otherwise silently miss the events in between.
                for sub in list(self._subs):
                    self._unsubscribe(sub)
                self._ring.clear()
                self._latest.clear()  # events were skipped: start again from the snapshot
                for event in objects:
                    self._remember(event)
                self._last = max(self._last, current)
                self._drain()
            except Exception:
                log.exception("watch hub could not read the event log; retrying")

    async def _catch_up(self) -> None:
        if self.store.inline and self.store.current_revision() <= self._last:
            return  # the usual answer to the periodic poll, without a thread hop or a log read
        while True:
            batch = await anyio.to_thread.run_sync(self.store.events_after, self._last)
            for event in batch:
                if event.revision > self._last:
                    self._dispatch(event)
            self._drain()
            if len(batch) < 10_000:
                return

    def _on_notify(self, payload: str | None) -> None:
        """A NOTIFY (``"<revision> <origin>"``) or a (re)connection (None): read the log if needed.

        Writes of this process's own store are skipped: its commit listener hands them over already.
        """
        if payload is None:
            self.poke()
            return
        text, _, origin = payload.partition(" ")
        if origin and origin == self.store.origin:
            return
        try:
            revision = int(text)
        except ValueError:
            self.poke()
            return
        if revision > self._last and revision not in self._pending:
            self.poke()

    def _listen_postgres(self) -> None:
        """Blocking LISTEN loop in a thread; each NOTIFY (a revision) wakes the hub.

        The hub registers its store's origin as a watcher and refreshes the registration while it
        listens: writers notify only when a watcher other than themselves is registered
        (objects_0004). On every (re)connection the hub is woken once too, to read what was committed
        while no LISTEN was in place (before the first connection, or while the database was away).
        """
        import psycopg

        own = f" {self.store.origin}"
        dsn = libpq_dsn(self.store.engine.url)
        while not self._listen_stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                    self._register(conn, first=True)
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening.set()
                    self._call_in_loop(self._on_notify, None)
                    registered = time.monotonic()
                    while not self._listen_stop.is_set():
                        for note in conn.notifies(timeout=0.25):
                            if not note.payload.endswith(own):  # own writes: not worth a loop wake-up
                                self._call_in_loop(self._on_notify, note.payload)
                        if time.monotonic() - registered >= WATCHER_REFRESH_SECONDS:
                            self._register(conn, first=False)
                            registered = time.monotonic()
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(f"DELETE FROM {WATCHERS_TABLE} WHERE origin = %s", (self.store.origin,))
            except Exception as exc:  # reconnect after a database restart
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._listen_stop.wait(1.0)
            finally:
                self.listening.clear()

    def _register(self, conn: Any, *, first: bool) -> None:
        """Say (again) that this store's origin watches; on connecting, drop long-dead watchers."""
        conn.execute(
            f"INSERT INTO {WATCHERS_TABLE} (origin, seen) VALUES (%s, now()) "
            "ON CONFLICT (origin) DO UPDATE SET seen = now()",
            (self.store.origin,),
        )
        if first:
            conn.execute(f"DELETE FROM {WATCHERS_TABLE} WHERE seen < now() - interval '1 hour'")

    def _call_in_loop(self, fn: Callable[[str | None], None], arg: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, arg)
