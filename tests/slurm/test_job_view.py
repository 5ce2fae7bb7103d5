"""The job bridge's view of Slurm's jobs asks slurmctld for every job each tick only while it follows
some: an idle bridge must not dump a busy queue every two seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from slurmlink.bridge.jobview import JobView
from slurmlink.slurm.batchjobs import JobSummary
from slurmlink.slurm.commands import CommandResult, SlurmCommands
from slurmlink.slurm.devcluster import DevCluster

INTERVAL = 0.1


class CountingCommands(SlurmCommands):
    """The real commands, counting the ``scontrol`` runs."""

    def __init__(self, slurm_conf: Path) -> None:
        super().__init__(slurm_conf)
        self.scontrols = 0

    async def run(self, *argv: str, env_extra: dict[str, str] | None = None) -> CommandResult:
        if argv[0] == "scontrol":
            self.scontrols += 1
        return await super().run(*argv, env_extra=env_extra)


async def _until(condition: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def test_an_idle_view_asks_slurm_only_when_poked_or_following_a_job(dev_cluster: DevCluster) -> None:
    result = dev_cluster.run_as_job_user(
        ["sbatch", "--parsable", "--hold", "-J", "view-idle", "-o", "/dev/null", "--wrap", "true"], timeout=30
    )
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    commands = CountingCommands(dev_cluster.slurm_conf)
    view = JobView(commands, interval=INTERVAL, idle_interval=3600, accounting=False)

    async def scenario() -> None:
        runner = asyncio.create_task(view.run())
        try:
            await _until(lambda: view.ticks == 1)  # the first snapshot is taken at once
            # Idle: twenty intervals pass without a snapshot.
            idle_until = time.monotonic() + 20 * INTERVAL
            while time.monotonic() < idle_until:
                await asyncio.sleep(INTERVAL)
            assert (view.ticks, commands.scontrols) == (1, 1)
            # A waiter for a fresh snapshot gets one, and nothing more follows.
            await view.fresh(time.monotonic(), timeout=20)
            assert view.ticks == 2 and view.job_with_comment("nothing") is None
            # Following a job: a snapshot every interval, with the job's state in it.
            view.track(job, lambda: None)
            await _until(lambda: view.ticks >= 5)
            summary = view.summary(job)
            assert isinstance(summary, JobSummary) and summary.state == "PENDING", summary
            view.untrack(job)
            settled = view.ticks
            idle_until = time.monotonic() + 20 * INTERVAL
            while time.monotonic() < idle_until:
                await asyncio.sleep(INTERVAL)
            assert view.ticks <= settled + 1  # at most the tick that was under way
        finally:
            runner.cancel()

    try:
        asyncio.run(scenario())
    finally:
        dev_cluster.run_slurm(["scancel", job], timeout=30)
