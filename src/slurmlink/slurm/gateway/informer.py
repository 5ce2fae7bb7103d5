"""A list+watch cache of one kind in one namespace, with event-driven waiting.

The gateway keeps one of these for Workflows and one for DWDirectiveRules. Every wait on a Workflow
(state reached, error reported, object gone) is answered from this cache when a watch event arrives,
so nothing polls the API. The cache also knows whether the API is reachable and since when not, so
waits can fail with a clear message after a bounded time instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from slurmlink.client.base import Client
from slurmlink.resources.kind import Kind, Obj

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Re-evaluate waits at least this often, for conditions that depend on time (grace periods).
_TICK = 1.0


class WaitTimeout(Exception):
    """A wait ran out of time."""


class Informer:
    """Keeps ``cache`` equal to the API's objects of ``kind`` in ``namespace``; wakes waiters on change."""

    def __init__(self, client: Client, kind: Kind, namespace: str, *, retry_delay: float = 0.5) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.retry_delay = retry_delay
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        #: Monotonic time since which the API has not been reachable (None while it is).
        self.unreachable_since: float | None = None
        self.last_error: str = ""
        self._waiters: dict[str, asyncio.Event] = {}
        self._any_change = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"informer-{self.kind.plural}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def unreachable_for(self) -> float:
        """Seconds the API has been unreachable (0 while reachable)."""
        since = self.unreachable_since
        return 0.0 if since is None else time.monotonic() - since

    def _notify(self, name: str | None) -> None:
        if name is None:
            for event in self._waiters.values():
                event.set()
            self._waiters.clear()
        else:
            waiter = self._waiters.pop(name, None)
            if waiter is not None:
                waiter.set()
        self._any_change.set()
        self._any_change = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                items, revision = await self.client.list(self.kind, self.namespace)
                self.cache = {o["metadata"]["name"]: o for o in items}
                self._reachable()
                self.synced.set()
                self._notify(None)
                events = await self.client.watch(self.kind, self.namespace, revision)
                async with contextlib.aclosing(events):  # type: ignore[type-var]
                    async for event in events:
                        if event.type == "BOOKMARK":
                            continue
                        if event.type == "ERROR":
                            break  # e.g. 410 Gone: re-list
                        name = event.object["metadata"]["name"]
                        if event.type == "DELETED":
                            self.cache.pop(name, None)
                        else:
                            self.cache[name] = event.object
                        self._notify(name)
                # The stream ended normally (server closed it): re-list right away.
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unreachable(str(exc))
                self._notify(None)
                await asyncio.sleep(self.retry_delay)

    def _reachable(self) -> None:
        if self.unreachable_since is not None:
            log.info("%s: API reachable again", self.kind.plural)
        self.unreachable_since = None
        self.last_error = ""

    def _unreachable(self, reason: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            log.warning("%s: list/watch failed: %s", self.kind.plural, reason)
        self.last_error = reason

    def put(self, obj: Obj) -> None:
        """Record an object this process just wrote, unless the cache already holds a newer one."""
        name = obj["metadata"]["name"]
        current = self.cache.get(name)
        if current is None or _rv(obj) >= _rv(current):
            self.cache[name] = obj
            self._notify(name)

    async def wait_for(
        self, name: str, probe: Callable[[Obj | None], _T | None], timeout: float | None = None
    ) -> _T:
        """Return ``probe(object-or-None)`` as soon as it is not None, re-checked on every change.

        ``probe`` is also re-run at least every second so it may fail on time-based conditions.
        Raises WaitTimeout after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = probe(self.cache.get(name))
            if result is not None:
                return result
            event = self._waiters.get(name)
            if event is None:
                event = self._waiters[name] = asyncio.Event()
            wait = _TICK
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(name)
                wait = min(wait, remaining)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), wait)


def sync_problem(*informers: Informer) -> str | None:
    """None when every informer has listed and its watch is live, else why not (for health checks)."""
    for informer in informers:
        if not informer.synced.is_set():
            return f"not synced with the slurmlink API yet ({informer.last_error or 'connecting'})"
        if informer.unreachable_since is not None:
            return f"slurmlink API unreachable: {informer.last_error}"
    return None


def _rv(obj: Obj) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0
