"""A small controller runtime: shared informers, a de-duplicating work queue, N workers.

Follows controller-runtime's contract: a key is never reconciled by two workers at once; events
arriving while it is being reconciled mark it dirty so it runs again; write conflicts and errors
requeue with back-off. Reconcilers must be safe to run twice.

A reconciler watches its primary kind and, like controller-runtime's ``Watches``/``Owns``, any number
of secondary kinds whose events are mapped to primary keys. Every watch may carry a label selector.
The caches are the process's shared informers, so two controllers of one kind list+watch it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from slurmlink.api import metrics
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory, Key, SharedInformer, object_key, resource_version
from slurmlink.resources import errors
from slurmlink.resources.kind import Kind, Obj

log = logging.getLogger(__name__)

__all__ = ["ControllerRunner", "Key", "Reconciler", "Result", "Watch", "owns", "watches"]

#: Maps an object of a secondary kind to the primary keys to reconcile.
MapFunc = Callable[[Obj], Iterable[Key]]


@dataclass
class Result:
    """What a reconcile asks for next: nothing, or another run after ``requeue_after`` seconds."""

    requeue_after: float | None = None


@dataclass(frozen=True)
class Watch:
    """A secondary kind; each of its events enqueues the primary keys ``map`` returns.

    ``map=None`` means "owned": the owner named by a ``controller: true`` ownerReference of the
    primary kind (controller-runtime's ``Owns``).
    """

    kind: Kind
    map: MapFunc | None = None
    namespace: str | None = None
    label_selector: str | None = None


def watches(
    kind: Kind, map_fn: MapFunc, *, namespace: str | None = None, label_selector: str | None = None
) -> Watch:
    """controller-runtime's ``Watches(kind, EnqueueRequestsFromMapFunc(map_fn))``."""
    return Watch(kind, map_fn, namespace, label_selector)


def owns(kind: Kind, *, namespace: str | None = None, label_selector: str | None = None) -> Watch:
    """controller-runtime's ``Owns(kind)``: changes to a child reconcile its controlling owner."""
    return Watch(kind, None, namespace, label_selector)


def owner_keys(obj: Obj, owner: Kind) -> list[Key]:
    """Keys of the controlling owners of ``obj`` that are of kind ``owner``."""
    m = obj.get("metadata") or {}
    namespace = (m.get("namespace") or "") if owner.namespaced else ""
    out: list[Key] = []
    for ref in m.get("ownerReferences") or []:
        if not ref.get("controller") or ref.get("kind") != owner.kind:
            continue
        api_version = str(ref.get("apiVersion") or "")
        group = api_version.rpartition("/")[0]
        if group == owner.group and ref.get("name"):
            out.append((namespace, ref["name"]))
    return out


class Reconciler:
    """Subclasses set ``name`` and ``kind`` and implement ``reconcile``.

    ``namespace`` and ``label_selector`` narrow the primary watch; ``secondary()`` lists further
    watches. ``informers`` and ``client`` (set by the runner) give read access to every shared cache
    and the API, also to :meth:`background`.
    """

    name = "reconciler"
    kind: Kind
    namespace: str | None = None
    label_selector: str | None = None
    informers: InformerFactory
    client: Client

    def secondary(self) -> Sequence[Watch]:
        return ()

    def wants(self, obj: Obj) -> bool:
        """A predicate on primary objects (controller-runtime's predicates): others are not queued."""
        return True

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        raise NotImplementedError

    async def background(self, enqueue: Callable[[Key], None]) -> None:
        """Work beside the queue while the workers run (controller-runtime's Runnable, e.g. polling
        an outside system and enqueueing what changed); cancelled when they stop."""
        return None


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
    """Drives one reconciler against one client, on shared informers.

    ``start()`` = ``prepare()`` (handlers, informers) + ``start_workers()``. Under leader election the
    manager prepares every runner at once, so caches are warm, and starts workers only while leading.
    Without ``informers`` the runner has a factory of its own and stops it on ``stop()``.
    """

    def __init__(
        self,
        client: Client,
        reconciler: Reconciler,
        *,
        workers: int = 2,
        informers: InformerFactory | None = None,
    ) -> None:
        self.client = client
        self.reconciler = reconciler
        self.workers = workers
        self._own_informers = informers is None
        self.informers = informers or InformerFactory(client)
        reconciler.informers = self.informers
        reconciler.client = client
        self.primary = self.informers.informer(
            reconciler.kind, reconciler.namespace, reconciler.label_selector
        )
        self._watched: list[tuple[SharedInformer, Callable[[str, Obj | None, Obj | None], None]]] = []
        self._queue = _Queue()
        self._failures: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._prepared = False

    @property
    def cache(self) -> dict[Key, Obj]:
        return self.primary.cache

    @property
    def synced(self) -> bool:
        return all(informer.synced.is_set() for informer, _ in self._watched) and self.primary.synced.is_set()

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self.primary.synced.wait()
            for informer, _ in self._watched:
                await informer.synced.wait()

    def prepare(self) -> None:
        """Register event handlers and start the informers (idempotent)."""
        if self._prepared:
            return
        self._prepared = True
        wants = self.reconciler.wants
        self._watch_primary(wants)
        primary = self.reconciler.kind
        for spec in self.reconciler.secondary():
            informer = self.informers.informer(spec.kind, spec.namespace, spec.label_selector)
            mapper: MapFunc = spec.map or (lambda obj: owner_keys(obj, primary))
            self._watch(informer, mapper)
        for informer, _ in self._watched:
            informer.start()

    def _watch_primary(self, wants: Callable[[Obj], bool]) -> None:
        """Queue a primary object when its current state is wanted (the last one, once deleted).

        Not its previous state: a predicate says what needs work now, and an update that leaves
        nothing to do (a Workflow whose state is achieved) wakes no worker.
        """

        def handler(_type: str, new: Obj | None, old: Obj | None) -> None:
            current = new if new is not None else old
            if current is not None and wants(current):
                self._queue.add(object_key(current))

        self._watched.append((self.primary, handler))
        self.primary.add_handler(handler)

    def _watch(self, informer: SharedInformer, mapper: MapFunc) -> None:
        def handler(_type: str, new: Obj | None, old: Obj | None) -> None:
            for obj in (new, old):
                if obj is not None:
                    for key in mapper(obj):
                        self._queue.add(key)

        self._watched.append((informer, handler))
        informer.add_handler(handler)

    def start(self) -> None:
        self.prepare()
        self.start_workers()

    def start_workers(self) -> None:
        if self._tasks:
            return
        for key, obj in list(self.primary.cache.items()):  # a resync: work missed while not running
            if self.reconciler.wants(obj):
                self._queue.add(key)
        name = self.reconciler.name
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{name}-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._background(), name=f"{name}-background"))

    async def _background(self) -> None:
        try:
            await self.reconciler.background(lambda key: self._queue.add(key))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: background work failed", self.reconciler.name)

    async def stop_workers(self) -> None:
        """Stop reconciling now (in-flight reconciles are cancelled); the informers keep running."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._queue = _Queue()
        self._failures.clear()

    async def stop(self) -> None:
        await self.stop_workers()
        for informer, handler in self._watched:
            informer.remove_handler(handler)
        self._watched.clear()
        self._prepared = False
        if self._own_informers:
            await self.informers.stop()

    def enqueue(self, namespace: str, name: str) -> None:
        self._queue.add((namespace, name))

    async def _worker(self) -> None:
        name = self.reconciler.name
        while True:
            queue = self._queue
            key = await queue.take()
            delay: float | None = None
            try:
                obj = self.primary.cache.get(key)
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
                queue.done(key)
            if delay is not None:
                asyncio.get_running_loop().call_later(delay, self._requeue, queue, key)

    def _requeue(self, queue: _Queue, key: Key) -> None:
        if queue is self._queue:  # not a queue dropped by stop_workers
            queue.add(key)

    async def _refresh(self, key: Key) -> None:
        try:
            obj = await self.client.get(self.reconciler.kind, key[0] or None, key[1])
        except errors.ApiError:
            return
        current = self.primary.cache.get(key)
        if current is None or resource_version(obj) >= resource_version(current):
            self.primary.put(obj)
        self._queue.dirty.add(key)

    def _backoff(self, key: Key) -> float:
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        return float(min(0.05 * 2**n, 30.0))
