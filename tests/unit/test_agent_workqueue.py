"""The node agents' work queue: one reconcile per key at a time, bounded workers, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from slurmlink.agent.objects import trigger
from slurmlink.agent.workqueue import WorkQueue

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_key_is_never_reconciled_twice_at_once_and_workers_are_bounded() -> None:
    running: set[Hashable] = set()
    peak = 0
    calls: list[Hashable] = []
    release = asyncio.Event()

    async def reconcile(key: Hashable) -> float | None:
        nonlocal peak
        assert key not in running
        running.add(key)
        peak = max(peak, len(running))
        calls.append(key)
        await release.wait()
        running.discard(key)
        return None

    queue = WorkQueue(reconcile, workers=2)
    queue.start()
    try:
        for key in ("a", "b", "c", "a", "a"):
            queue.add(key)
        await asyncio.sleep(0.05)
        assert sorted(calls) == ["a", "b"] and peak == 2
        queue.add("a")  # changed while being handled: handled again afterwards, once
        release.set()
        for _ in range(100):
            if not queue.busy():
                break
            await asyncio.sleep(0.01)
        assert sorted(calls) == ["a", "a", "b", "c"]
    finally:
        await queue.stop()


async def test_a_retry_comes_after_its_delay_and_an_add_brings_it_forward() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def reconcile(key: Hashable) -> float | None:
        calls.append(loop.time())
        return 10.0 if len(calls) == 1 else None

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    try:
        queue.add("k")
        await asyncio.sleep(0.05)
        assert len(calls) == 1
        queue.add("k")  # the object changed: now, not in 10 s
        await asyncio.sleep(0.05)
        assert len(calls) == 2
    finally:
        await queue.stop()


async def test_an_exception_is_retried() -> None:
    calls = 0

    async def reconcile(key: Hashable) -> float | None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    try:
        queue.add("k")
        await asyncio.sleep(0.05)
        assert calls == 1 and "k" in queue._timers
    finally:
        await queue.stop()


def test_a_status_change_is_not_a_trigger() -> None:
    base = {"metadata": {"name": "x", "finalizers": ["f"]}, "spec": {"a": 1}, "status": {"state": "Pending"}}
    assert trigger(base) == trigger({**base, "status": {"state": "Ready"}})
    assert trigger(base) != trigger({**base, "spec": {"a": 2}})
    deleted = {**base, "metadata": {**base["metadata"], "deletionTimestamp": "2024-01-01T00:00:00Z"}}
    assert trigger(base) != trigger(deleted)
