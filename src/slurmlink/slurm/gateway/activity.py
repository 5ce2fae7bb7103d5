"""Which jobs burst_buffer.lua is calling about right now, and how long each has been quiet.

The sweeper must not tear down a Workflow that Slurm is still working on. Slurm's own view
(``squeue``) cannot say whether a teardown is about to arrive; the gateway can: a job with a callback
open, or one that called a moment ago, is still being handled by Slurm.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable


class CallbackActivity:
    """Open callbacks and the time of the last call, per job id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: Jobs never heard of count as quiet since the gateway started (it may have restarted mid-call).
        self._since_start = clock()
        self._open: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def begin(self, job_id: str) -> None:
        self._open[job_id] += 1
        self._last[job_id] = self._clock()

    def end(self, job_id: str) -> None:
        self._open[job_id] -= 1
        if self._open[job_id] <= 0:
            del self._open[job_id]
        self._last[job_id] = self._clock()

    def quiet_for(self, job_id: str) -> float | None:
        """Seconds since the last callback about ``job_id`` ended; None while one is open."""
        if self._open.get(job_id):
            return None
        return self._clock() - self._last.get(job_id, self._since_start)

    def forget_quiet(self, older_than: float) -> None:
        """Drop the record of jobs quiet for longer than ``older_than`` seconds (bounded memory)."""
        now = self._clock()
        stale = [job for job, at in self._last.items() if now - at > older_than and not self._open.get(job)]
        for job_id in stale:
            del self._last[job_id]
