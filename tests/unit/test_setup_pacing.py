"""The gateway's setup pacing: a few setups at once, the waiting ones lowest job id first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from slurmlink.slurm.gateway.pacing import SetupPacer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Setups:
    """An operation whose calls run until released, recording the order they started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    async def __call__(self, fields: Mapping[str, str]) -> str:
        job = fields["job_id"]
        self.started.append(job)
        await self.release.setdefault(job, asyncio.Event()).wait()
        if job in self.fail:
            raise RuntimeError(f"setup of {job} failed")
        return ""

    def done(self, job: str) -> None:
        self.release.setdefault(job, asyncio.Event()).set()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiting_setups_go_lowest_job_id_first() -> None:
    setups = Setups()
    pacer = SetupPacer(2)
    paced = pacer.pace(setups)
    calls = {job: asyncio.create_task(paced({"job_id": job})) for job in ("15", "12", "14", "9", "13")}
    await _settle()
    assert setups.started == ["15", "12"]  # the first two arrivals: turns were free
    assert pacer.waiting == 3
    setups.done("15")
    await _settle()
    assert setups.started == ["15", "12", "9"]
    setups.done("12")
    setups.done("9")
    await _settle()
    assert setups.started == ["15", "12", "9", "13", "14"]
    for job in ("13", "14"):
        setups.done(job)
    assert await asyncio.gather(*calls.values()) == [""] * 5
    assert pacer.running == 0 and pacer.waiting == 0


async def test_a_failed_or_cancelled_setup_gives_its_turn_back() -> None:
    setups = Setups()
    pacer = SetupPacer(1)
    paced = pacer.pace(setups)
    setups.fail.add("1")
    first = asyncio.create_task(paced({"job_id": "1"}))
    waiting = asyncio.create_task(paced({"job_id": "2"}))
    third = asyncio.create_task(paced({"job_id": "3"}))
    await _settle()
    waiting.cancel()  # job 2 cancelled while it waits (Slurm gave up on it)
    setups.done("1")
    with pytest.raises(RuntimeError, match="setup of 1 failed"):
        await first
    await _settle()
    assert setups.started == ["1", "3"]
    setups.done("3")
    await third
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pacer.running == 0
    # Turns are free again: the next setup starts at once.
    setups.done("4")
    await asyncio.wait_for(paced({"job_id": "4"}), 1)


async def test_a_setup_that_waited_too_long_goes_ahead(caplog: pytest.LogCaptureFixture) -> None:
    setups = Setups()
    pacer = SetupPacer(1, max_wait=0.05)
    paced = pacer.pace(setups)
    holder = asyncio.create_task(paced({"job_id": "1"}))
    await _settle()
    setups.done("2")
    with caplog.at_level(logging.WARNING, logger="slurmlink.slurm.gateway.pacing"):
        await asyncio.wait_for(paced({"job_id": "2"}), 5)
    assert setups.started == ["1", "2"]  # job 1 still holds the only turn
    assert "job 2: setup waited 0 s for one of 1 turns; going ahead" in caplog.text
    setups.done("1")
    await holder
    assert pacer.running == 0 and pacer.waiting == 0


async def test_at_least_one_setup_at_once() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SetupPacer(0)
