"""Setups taken a few at a time, the oldest job first.

Slurm starts the stage-in of every pending burst-buffer job its pools have room for at once: after a
burst of submissions, hundreds of ``setup`` calls within a second, in no useful order (one thread
each). Worked on all together, each shares the API server, the storage agents and this worker with
all the others, so even the job Slurm will start first has its buffer only when nearly every job has
one, and the ``pre_run`` of the first jobs to start waits behind the rest of the wave. Taken a few at
a time, lowest job id first (the order Slurm starts jobs of equal priority in), the first jobs are
staged in within a setup's time and the others follow while the first ones run.

A setup that has waited ``max_wait`` seconds goes ahead without a turn, so a very long queue cannot
run into Slurm's timeout for the call (OtherTimeout, 300 s by default).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import sys
import time
from collections.abc import Mapping

from slurmlink.slurm.gateway.server import Operation

log = logging.getLogger(__name__)

#: Seconds a setup waits for its turn before it goes ahead anyway (well within Slurm's 300 s).
DEFAULT_MAX_WAIT = 60.0


class SetupPacer:
    """At most ``limit`` calls of an operation at once; waiting calls get their turn lowest job id first."""

    def __init__(self, limit: int, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        if limit < 1:
            raise ValueError("the number of setups at once must be at least 1")
        self.limit = limit
        self.max_wait = max_wait
        self.running = 0
        #: (job id, arrival, turn): calls waiting for their turn, as a heap.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, turn in self._waiting if not turn.done())

    def pace(self, operation: Operation) -> Operation:
        async def paced(fields: Mapping[str, str]) -> str:
            has_turn = await self._wait_turn(fields)
            try:
                return await operation(fields)
            finally:
                if has_turn:
                    self._pass_turn()

        return paced

    async def _wait_turn(self, fields: Mapping[str, str]) -> bool:
        """Whether the call got a turn (False: it waited ``max_wait`` and goes ahead without one)."""
        if self.running < self.limit and not self.waiting:
            self.running += 1
            return True
        job_id = fields.get("job_id", "")
        log.debug(
            "job %s: setup waits for one of %d turns (%d waiting)", job_id or "?", self.limit, self.waiting
        )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (_job_order(job_id), next(self._arrivals), turn))
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.max_wait)
            return True
        except TimeoutError:
            if turn.done():  # handed over just as the wait ran out: take it after all
                return True
            turn.cancel()
            log.warning(
                "job %s: setup waited %.0f s for one of %d turns; going ahead",
                job_id or "?",
                time.monotonic() - started,
                self.limit,
            )
            return False
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._pass_turn()  # handed over to a caller that is gone: pass it on
            turn.cancel()
            raise

    def _pass_turn(self) -> None:
        """The turn of a finished call goes to the waiting call with the lowest job id."""
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1


def _job_order(job_id: str) -> int:
    """Sort key of a job id (a call without one goes last)."""
    return int(job_id) if job_id.isdigit() else sys.maxsize
