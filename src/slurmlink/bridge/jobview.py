"""What Slurm says about the bridge's jobs, read with one call per tick whatever their number.

Each tick runs ``scontrol --oneliner show job`` once (every job slurmctld holds, exit codes and
signals apart) and, only when a tracked job is missing from it (slurmctld purges ended jobs after
``MinJobAge``), one ``sacct`` for all the missing ones. Reconcilers never run a Slurm command to learn
a job's state: they read the latest summary here and are woken when it changes. A job that neither
knows for two ticks in a row is reported lost (the ``Unknown`` phase). While no job is tracked, only a
poke or the idle interval brings a snapshot: a burst-buffer or bank workload of hundreds of jobs must
not pay for a dump of them every tick on behalf of a bridge that runs none.

The same snapshot answers "was this already submitted?": the bridge tags every job's comment, and a
submission first waits for a snapshot taken after it recorded its intent, then looks the tag up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slurmlink.api import metrics
from slurmlink.slurm import batchjobs, slurmconf
from slurmlink.slurm.batchjobs import JobRecord, JobSummary
from slurmlink.slurm.commands import SlurmCommandError, SlurmCommands

log = logging.getLogger(__name__)

#: Ticks a tracked job may be missing from both scontrol and sacct before it counts as lost.
LOST_AFTER_TICKS = 2
#: Seconds between snapshots while no job is tracked and nobody asked for one: each is a dump of
#: every job slurmctld holds (under its job lock), of no use to anyone while the bridge runs no job.
IDLE_INTERVAL = 30.0


@dataclass(frozen=True)
class Lost:
    """A job Slurm no longer knows (neither slurmctld nor the accounting)."""

    job_id: str


class JobView:
    """The latest snapshot of Slurm's jobs, refreshed every ``interval`` seconds while jobs are tracked
    (sooner when poked), every ``idle_interval`` seconds while none is."""

    def __init__(
        self,
        commands: SlurmCommands,
        *,
        interval: float = 2.0,
        idle_interval: float = IDLE_INTERVAL,
        accounting: bool | None = None,
    ) -> None:
        self.commands = commands
        self.interval = interval
        self.idle_interval = max(idle_interval, interval)
        #: Whether sacct can answer; None: as slurm.conf says when it is needed (the server may start
        #: before the cluster's slurm.conf exists, as in the quick start).
        self.accounting = accounting
        #: Job id → what to call when its summary changes.
        self._tracked: dict[str, Callable[[], None]] = {}
        self._summaries: dict[str, JobSummary | Lost] = {}
        self._from_accounting: dict[str, JobSummary] = {}
        self._missing: dict[str, int] = {}
        self._by_comment: dict[str, str] = {}
        #: The latest snapshot's records by job id (an array's tasks under the array's id too).
        self._by_job: dict[str, list[JobRecord]] = {}
        self._wake = asyncio.Event()
        self._requested = False
        self._ticked = asyncio.Condition()
        #: monotonic time at which the latest successful snapshot was started; -inf before the first.
        self.taken_at = float("-inf")
        self.ticks = 0
        self.commands_run = 0
        self.last_error: str | None = None

    # ---- what reconcilers use ----------------------------------------------------------------

    def track(self, job_id: str, notify: Callable[[], None]) -> None:
        self._tracked[job_id] = notify

    def untrack(self, job_id: str) -> None:
        self._tracked.pop(job_id, None)
        self._summaries.pop(job_id, None)
        self._from_accounting.pop(job_id, None)
        self._missing.pop(job_id, None)

    def summary(self, job_id: str) -> JobSummary | Lost | None:
        """The job's latest summary; None until a snapshot has seen it (or decided it is lost)."""
        found = self._summaries.get(job_id)
        if found is not None:
            return found
        records = self._by_job.get(job_id)
        return batchjobs.summarize(job_id, records) if records else None

    def job_with_comment(self, comment: str) -> str | None:
        """The id of the job whose comment is ``comment`` in the latest snapshot."""
        return self._by_comment.get(comment)

    def poke(self) -> None:
        """Refresh now rather than at the end of the interval (e.g. right after a submission)."""
        self._requested = True
        self._wake.set()

    async def fresh(self, since: float, timeout: float = 60.0) -> None:
        """Wait for a snapshot started after ``since`` (monotonic), so it reflects anything done before."""
        async with asyncio.timeout(timeout), self._ticked:
            while self.taken_at <= since:
                self.poke()
                await self._ticked.wait()

    # ---- the loop ----------------------------------------------------------------------------

    def _due(self) -> bool:
        """A tick refreshes when asked to, while jobs are tracked, or once per idle interval."""
        idle_for = time.monotonic() - self.taken_at
        return self._requested or bool(self._tracked) or idle_for >= self.idle_interval

    async def run(self) -> None:
        while True:
            if self._due():
                self._requested = False
                await self.refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _run(self, argv: list[str] | tuple[str, ...]) -> str | None:
        self.commands_run += 1
        metrics.BRIDGE_SLURM_COMMANDS.labels(argv[0]).inc()
        try:
            result = await self.commands.run(*argv)
        except SlurmCommandError as exc:
            self._failed(str(exc))
            return None
        if result.returncode != 0:
            self._failed(f"{argv[0]} failed: {(result.stderr or result.stdout).strip()}")
            return None
        return result.stdout

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("job bridge cannot read Slurm's jobs: %s", message)
        self.last_error = message

    async def refresh(self) -> None:
        """One tick: scontrol for everything, sacct for tracked jobs scontrol no longer has."""
        started = time.monotonic()
        text = await self._run(batchjobs.SCONTROL_JOBS_ARGV)
        if text is None:
            return  # keep the last snapshot: a slurmctld restart must not make every job "lost"
        self.last_error = None
        records = batchjobs.parse_scontrol_jobs(text)
        by_job: dict[str, list[JobRecord]] = {}
        for record in records:
            by_job.setdefault(record.job_id, []).append(record)
            if record.array_job_id is not None:
                by_job.setdefault(record.array_job_id, []).append(record)
        self._by_job = by_job
        self._by_comment = {r.comment: r.array_job_id or r.job_id for r in records if r.comment}
        fresh: dict[str, JobSummary | Lost] = {}
        missing = []
        for job_id in list(self._tracked):
            found = batchjobs.summarize(job_id, by_job.get(job_id, ()))
            if found is not None:
                fresh[job_id] = found
                self._missing.pop(job_id, None)
            elif job_id in self._from_accounting:
                fresh[job_id] = self._from_accounting[job_id]
            else:
                missing.append(job_id)
        if missing and self._has_accounting():
            fresh.update(await self._accounted(missing))
        for job_id in missing:
            if job_id in fresh:
                continue
            self._missing[job_id] = self._missing.get(job_id, 0) + 1
            if self._missing[job_id] >= LOST_AFTER_TICKS:
                fresh[job_id] = Lost(job_id)
        changed = [j for j, s in fresh.items() if self._summaries.get(j) != s]
        self._summaries = fresh
        self.taken_at = started
        self.ticks += 1
        metrics.BRIDGE_TICKS.inc()
        async with self._ticked:
            self._ticked.notify_all()
        for job_id in changed:
            notify = self._tracked.get(job_id)
            if notify is not None:
                notify()

    def _has_accounting(self) -> bool:
        if self.accounting is not None:
            return self.accounting
        conf = self.commands.slurm_conf or Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
        storage = slurmconf.read_value(conf, "AccountingStorageType")
        return storage is not None and storage.lower() != "accounting_storage/none"

    async def _accounted(self, job_ids: list[str]) -> dict[str, JobSummary]:
        text = await self._run(batchjobs.sacct_argv(job_ids))
        if text is None:
            return {}
        records = batchjobs.parse_sacct_jobs(text)
        out: dict[str, JobSummary] = {}
        for job_id in job_ids:
            found = batchjobs.summarize(job_id, records)
            if found is not None and found.ended:
                self._from_accounting[job_id] = found  # ended for good: never asked again
                out[job_id] = found
            elif found is not None:
                out[job_id] = found
        return out
