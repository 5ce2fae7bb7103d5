"""A small controller runtime: list+watch into a cache, a de-duplicating work queue, N workers.

Follows controller-runtime's contract: a key is never reconciled by two workers at once; events
arriving while it is being reconciled mark it dirty so it runs again; write conflicts and errors
requeue with back-off. Reconcilers must be safe to run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from slurmlink.api import metrics
from slurmlink.client.base import Client
from slurmlink.resources import errors
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.watch import WatchEvent

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class Result:
    """What a reconcile asks for next: nothing, or another run after ``requeue_after`` seconds."""

    requeue_after: float | None = None


class Reconciler:
    """Subclasses set ``name`` and ``kind`` and implement ``reconcile``."""

    name = "reconciler"
    kind: Kind

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        raise NotImplementedError


@dataclass
class _Queue:
    ready: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    queued: set[Key] = field(default_factory=set)
    active: set[Key] = field(default_factory=set)
    dirty: set[Key] = field(default_factory=set)

    def add(self, key: Key) -> None:
        if key in self.active:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.ready.put_nowait(key)

    async def take(self) -> Key:
        key = await self.ready.get()
        self.queued.discard(key)
        self.active.add(key)
        return key

    def done(self, key: Key) -> None:
        self.active.discard(key)
        if key in self.dirty:
            self.dirty.discard(key)
            self.add(key)


class ControllerRunner:
    """Drives one reconciler against one client."""

    def __init__(self, client: Client, reconciler: Reconciler, *, workers: int = 2) -> None:
        self.client = client
        self.reconciler = reconciler
        self.workers = workers
        self.cache: dict[Key, Obj] = {}
        self._queue = _Queue()
        self._failures: dict[Key, int] = {}
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    def start(self) -> None:
        name = self.reconciler.name
        self._tasks.append(asyncio.create_task(self._informer(), name=f"{name}-informer"))
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{name}-worker-{i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()

    def enqueue(self, namespace: str, name: str) -> None:
        self._queue.add((namespace, name))

    async def _informer(self) -> None:
        kind = self.reconciler.kind
        while True:
            try:
                items, revision = await self.client.list(kind)
                self.cache = {_key(o): o for o in items}
                for key in self.cache:
                    self._queue.add(key)
                self._synced.set()
                events = await self.client.watch(kind, None, revision)
                async with contextlib.aclosing(events):  # type: ignore[type-var]
                    await self._consume(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: watch failed (%s); re-listing", self.reconciler.name, exc)
                await asyncio.sleep(1.0)

    async def _consume(self, events: AsyncIterator[WatchEvent]) -> None:
        """Apply watch events to the cache until the stream ends or reports an error."""
        async for event in events:
            if event.type == "BOOKMARK":
                continue
            if event.type == "ERROR":
                return
            key = _key(event.object)
            if event.type == "DELETED":
                self.cache.pop(key, None)
            else:
                self.cache[key] = event.object
            self._queue.add(key)

    async def _worker(self) -> None:
        name = self.reconciler.name
        while True:
            key = await self._queue.take()
            delay: float | None = None
            try:
                obj = self.cache.get(key)
                if obj is None:
                    continue
                result = await self.reconciler.reconcile(self.client, obj)
                self._failures.pop(key, None)
                metrics.RECONCILES.labels(name, "success").inc()
                if result is not None and result.requeue_after is not None:
                    delay = result.requeue_after
            except asyncio.CancelledError:
                raise
            except errors.ApiError as exc:
                if exc.code == 404:
                    metrics.RECONCILES.labels(name, "gone").inc()
                elif exc.code == 409:
                    # Our cached copy was stale; the watch brings the newer one and marks the key dirty.
                    metrics.RECONCILES.labels(name, "conflict").inc()
                    await self._refresh(key)
                else:
                    delay = self._backoff(key)
                    metrics.RECONCILES.labels(name, "error").inc()
                    log.warning("%s %s/%s: %s", name, key[0], key[1], exc.message)
            except Exception:
                delay = self._backoff(key)
                metrics.RECONCILES.labels(name, "error").inc()
                log.exception("%s %s/%s: reconcile failed", name, key[0], key[1])
            finally:
                self._queue.done(key)
            if delay is not None:
                asyncio.get_running_loop().call_later(delay, self._queue.add, key)

    async def _refresh(self, key: Key) -> None:
        try:
            obj = await self.client.get(self.reconciler.kind, key[0] or None, key[1])
        except errors.ApiError:
            return
        current = self.cache.get(key)
        if current is None or _rv(obj) >= _rv(current):
            self.cache[key] = obj
        self._queue.dirty.add(key)

    def _backoff(self, key: Key) -> float:
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        return float(min(0.05 * 2**n, 30.0))


def _key(obj: Obj) -> Key:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0
