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
from collections.abc import AsyncIterator, Callable

import anyio

from slurmlink.store.errors import ExpiredError
from slurmlink.store.events import Event
from slurmlink.store.sql import NOTIFY_CHANNEL, SqlStore

log = logging.getLogger(__name__)

EventFilter = Callable[[Event], bool]


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
        if event.revision <= self.last_revision or not self._matches(event):
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
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
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

    @property
    def revision(self) -> int:
        """Newest revision this hub has dispatched."""
        return self._last

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._last = await anyio.to_thread.run_sync(self.store.current_revision)
        self.store.add_commit_listener(self._on_local_commit)
        self._task = asyncio.create_task(self._run(), name="watch-hub")
        if self.store.is_postgres:
            self._listen_thread = threading.Thread(
                target=self._listen_postgres, name="pg-listen", daemon=True
            )
            self._listen_thread.start()

    async def stop(self) -> None:
        self.store.remove_commit_listener(self._on_local_commit)
        self._listen_stop.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
            backlog = await self._history(after, snapshot)
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
        if event.revision == self._last + 1:
            self._dispatch(event)
        elif event.revision > self._last + 1 and self._wake is not None:
            self._wake.set()  # a gap: another replica wrote; read it from the log

    def _dispatch(self, event: Event) -> None:
        self._last = event.revision
        self._ring.append(event)
        for sub in list(self._subs):
            sub._offer(event)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            try:
                await self._catch_up()
            except ExpiredError:
                log.warning("watch hub fell behind compaction; resetting watchers")
                for sub in list(self._subs):
                    self._unsubscribe(sub)
                self._last = await anyio.to_thread.run_sync(self.store.current_revision)
            except Exception:
                log.exception("watch hub could not read the event log; retrying")

    async def _catch_up(self) -> None:
        while True:
            batch = await anyio.to_thread.run_sync(self.store.events_after, self._last)
            for event in batch:
                if event.revision > self._last:
                    self._dispatch(event)
            if len(batch) < 10_000:
                return

    def _listen_postgres(self) -> None:
        """Blocking LISTEN loop in a thread; each NOTIFY wakes the hub."""
        import psycopg

        dsn = self.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._listen_stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self._listen_stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            loop, wake = self._loop, self._wake
                            if loop and wake and not loop.is_closed():
                                loop.call_soon_threadsafe(wake.set)
            except Exception as exc:  # reconnect after a database restart
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._listen_stop.wait(1.0)
