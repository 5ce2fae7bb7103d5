"""Shared informers: one list+watch per (kind, namespace, label selector) per process.

The model is client-go's ``SharedInformerFactory`` (controller-runtime's cache): every controller and
the gateway read the same cache instead of each opening its own watch, register event handlers on it,
and wait on it. Waits are event-driven: ``wait_for`` re-checks its probe when the object changes
(and at least every second, for conditions that depend on time), so nothing polls the API. Each
informer also knows whether the API is reachable and since when not, so callers can fail with a
clear message after a bounded time instead of hanging.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from slurmlink.client.base import Client
from slurmlink.resources.kind import Kind, Obj

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: (namespace, name); the namespace is "" for cluster-scoped kinds.
Key = tuple[str, str]
#: ``handler(event_type, new_or_None, old_or_None)`` with ADDED, MODIFIED or DELETED; it must not block.
EventHandler = Callable[[str, Obj | None, Obj | None], None]
#: Re-evaluate waits at least this often, for conditions that depend on time (grace periods).
_TICK = 1.0


class WaitTimeout(Exception):
    """A wait ran out of time."""


def object_key(obj: Obj) -> Key:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def resource_version(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class SharedInformer:
    """Keeps ``cache`` equal to the API's objects of ``kind`` (in ``namespace``, matching
    ``label_selector``), calls handlers on every change and wakes waiters."""

    def __init__(
        self,
        client: Client,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        retry_delay: float = 0.5,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.retry_delay = retry_delay
        self.cache: dict[Key, Obj] = {}
        self.synced = asyncio.Event()
        #: Monotonic time since which the API has not been reachable (None while it is).
        self.unreachable_since: float | None = None
        self.last_error: str = ""
        self._handlers: list[EventHandler] = []
        self._waiters: dict[Key, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        scope = self.namespace or "*"
        return f"{self.kind.plural}/{scope}" + (f"?{self.label_selector}" if self.label_selector else "")

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"informer-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self.synced.wait()

    # ---- reading -----------------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.cache.get((namespace or "", name))

    def list(self, namespace: str | None = None) -> list[Obj]:
        return [o for (ns, _), o in self.cache.items() if namespace is None or ns == namespace]

    def unreachable_for(self) -> float:
        """Seconds the API has been unreachable (0 while reachable)."""
        since = self.unreachable_since
        return 0.0 if since is None else time.monotonic() - since

    # ---- handlers and waits ------------------------------------------------------------------

    def add_handler(self, handler: EventHandler) -> None:
        """Call ``handler`` for every change from now on, after replaying the cache as ADDED."""
        self._handlers.append(handler)
        for obj in list(self.cache.values()):
            handler("ADDED", obj, None)

    def remove_handler(self, handler: EventHandler) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(handler)

    def put(self, obj: Obj) -> None:
        """Record an object this process just wrote, unless the cache already holds a newer one.

        The copy the cache already holds (same revision, same content) changes nothing and notifies no
        handler: a handler that writes and puts on every notification would otherwise wake itself forever.
        """
        key = object_key(obj)
        current = self.cache.get(key)
        if current is not None and resource_version(obj) == resource_version(current) and obj == current:
            return
        if current is None or resource_version(obj) >= resource_version(current):
            self._apply("ADDED" if current is None else "MODIFIED", key, obj, current)

    async def wait_for(
        self, key: Key, probe: Callable[[Obj | None], _T | None], timeout: float | None = None
    ) -> _T:
        """Return ``probe(object-or-None)`` as soon as it is not None, re-checked on every change.

        ``probe`` is also re-run at least every second so it may fail on time-based conditions.
        Raises WaitTimeout after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = probe(self.cache.get(key))
            if result is not None:
                return result
            event = self._waiters.get(key)
            if event is None:
                event = self._waiters[key] = asyncio.Event()
            wait = _TICK
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(key[1])
                wait = min(wait, remaining)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), wait)

    def _wake(self, key: Key | None) -> None:
        if key is None:
            for event in self._waiters.values():
                event.set()
            self._waiters.clear()
        else:
            waiter = self._waiters.pop(key, None)
            if waiter is not None:
                waiter.set()

    def _apply(self, event_type: str, key: Key, obj: Obj | None, old: Obj | None) -> None:
        if obj is None:
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        for handler in list(self._handlers):
            try:
                handler(event_type, obj, old)
            except Exception:
                log.exception("%s: event handler failed", self.name)
        self._wake(key)

    # ---- list+watch --------------------------------------------------------------------------

    def _replace(self, items: builtins.list[Obj]) -> None:
        """A fresh list: objects gone meanwhile are DELETED, changed ones MODIFIED (client-go's Replace)."""
        fresh = {object_key(o): o for o in items}
        for key in [k for k in self.cache if k not in fresh]:
            self._apply("DELETED", key, None, self.cache[key])
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None:
                self._apply("ADDED", key, obj, None)
            elif resource_version(old) != resource_version(obj) or old != obj:
                self._apply("MODIFIED", key, obj, old)

    async def _run(self) -> None:
        while True:
            try:
                items, revision = await self.client.list(self.kind, self.namespace, self.label_selector)
                self._replace(items)
                self._reachable()
                self.synced.set()
                self._wake(None)
                events = await self.client.watch(
                    self.kind, self.namespace, revision, label_selector=self.label_selector
                )
                async with contextlib.aclosing(events):  # type: ignore[type-var]
                    async for event in events:
                        if event.type == "BOOKMARK":
                            continue
                        if event.type == "ERROR":
                            break  # e.g. 410 Gone: re-list
                        key = object_key(event.object)
                        if event.type == "DELETED":
                            self._apply("DELETED", key, None, self.cache.get(key) or event.object)
                        else:
                            old = self.cache.get(key)
                            self._apply("ADDED" if old is None else "MODIFIED", key, event.object, old)
                # The stream ended normally (server closed it): re-list right away.
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unreachable(str(exc))
                self._wake(None)
                await asyncio.sleep(self.retry_delay)

    def _reachable(self) -> None:
        if self.unreachable_since is not None:
            log.info("%s: API reachable again", self.name)
        self.unreachable_since = None
        self.last_error = ""

    def _unreachable(self, reason: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            log.warning("%s: list/watch failed: %s", self.name, reason)
        self.last_error = reason


class InformerFactory:
    """One ``SharedInformer`` per (kind, namespace, label selector) for one client.

    Informers asked for before ``start`` start with it; those asked for later start at once.
    """

    def __init__(self, client: Client, *, retry_delay: float = 0.5) -> None:
        self.client = client
        self.retry_delay = retry_delay
        self._informers: dict[tuple[str, str | None, str | None], SharedInformer] = {}
        self._started = False

    def informer(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> SharedInformer:
        key = (kind.key, namespace or None, label_selector or None)
        informer = self._informers.get(key)
        if informer is None:
            informer = SharedInformer(
                self.client, kind, namespace or None, label_selector or None, retry_delay=self.retry_delay
            )
            self._informers[key] = informer
            if self._started:
                informer.start()
        return informer

    def informers(self) -> list[SharedInformer]:
        return list(self._informers.values())

    def start(self) -> None:
        self._started = True
        for informer in self._informers.values():
            informer.start()

    async def stop(self) -> None:
        self._started = False
        for informer in self._informers.values():
            await informer.stop()

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._informers.values())

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        async with asyncio.timeout(timeout):
            for informer in list(self._informers.values()):
                await informer.synced.wait()
