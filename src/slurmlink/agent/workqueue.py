"""A small work queue for the node agents: object keys reconciled by a bounded number of tasks.

Like client-go's workqueue: a key is queued at most once, handled by one worker at a time (a key added
while it is being handled is handled again afterwards), and a reconcile that asks for it is retried
after a delay. Reconciles that fail with an unexpected exception are logged and retried too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("slurmlink.agent")

#: Delay before retrying a reconcile that raised.
ERROR_RETRY = 2.0

#: ``reconcile(key)``: None when done, else seconds after which to reconcile the key again.
Reconcile = Callable[[Hashable], Awaitable[float | None]]


class WorkQueue:
    def __init__(self, reconcile: Reconcile, workers: int = 4, name: str = "work") -> None:
        self.reconcile = reconcile
        self.workers = max(1, workers)
        self.name = name
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Hashable) -> None:
        """Reconcile ``key`` now (cancels a pending retry of it)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Reconcile ``key`` in ``delay`` seconds (replacing an earlier retry of it)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._timer_fired, key)

    def _timer_fired(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def busy(self) -> bool:
        return bool(self._queued or self._active)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self.workers)
            ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            delay: float | None
            try:
                delay = await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s %s: %s; retrying in %g s", self.name, key, exc, ERROR_RETRY)
                log.debug("%s %s failed", self.name, key, exc_info=True)
                delay = ERROR_RETRY
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)
