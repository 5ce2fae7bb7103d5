"""``SlurmCommands.job_record`` against the real slurmctld: lookups made together share one squeue run.

Slurm 22.05's ``squeue --json`` prints every job whatever ``--jobs`` says, so the bank's prolog and
epilog for a wave of jobs would otherwise dump and parse the whole queue once per job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from slurmlink.slurm.commands import CommandResult, SlurmCommandError, SlurmCommands
from slurmlink.slurm.devcluster import DevCluster
from slurmlink.slurm.jobrecord import JobRecord, parse_job_line


class CountingCommands(SlurmCommands):
    """The real commands, recording each argument vector they run."""

    def __init__(self, slurm_conf: Path) -> None:
        super().__init__(slurm_conf)
        self.argvs: list[tuple[str, ...]] = []

    async def run(self, *argv: str, env_extra: dict[str, str] | None = None) -> CommandResult:
        self.argvs.append(argv)
        return await super().run(*argv, env_extra=env_extra)


def _held_job(cluster: DevCluster, name: str) -> str:
    result = cluster.run_as_job_user(
        ["sbatch", "--parsable", "--hold", "-J", name, "-o", "/dev/null", "--wrap", "true"], timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def test_concurrent_lookups_share_one_squeue_run(dev_cluster: DevCluster) -> None:
    jobs = [_held_job(dev_cluster, f"records-{i}") for i in range(3)]
    unknown = str(int(jobs[-1]) + 100_000)
    commands = CountingCommands(dev_cluster.slurm_conf)
    try:

        async def lookups() -> list[JobRecord | None]:
            return list(await asyncio.gather(*(commands.job_record(j) for j in [*jobs, unknown, jobs[0]])))

        records = asyncio.run(lookups())
        squeues = [a for a in commands.argvs if a[0] == "squeue"]
        assert len(squeues) == 1, squeues
        assert squeues[0][-1] == "--jobs=" + ",".join(sorted({*jobs, unknown}))
        found = [None if r is None else r.job_id for r in records]
        assert found == [int(j) for j in jobs] + [None, int(jobs[0])]
        for record in records[:3]:
            assert record is not None
            assert record.user == dev_cluster.job_user
            assert record.state == "PENDING"

        # A lookup made after a run has started waits for a run of its own.
        async def one_after_another() -> None:
            assert (await commands.job_record(jobs[1])) is not None
            assert (await commands.job_record(jobs[2])) is not None

        before = len([a for a in commands.argvs if a[0] == "squeue"])
        asyncio.run(one_after_another())
        assert len([a for a in commands.argvs if a[0] == "squeue"]) == before + 2
    finally:
        dev_cluster.run_slurm(["scancel", *jobs], timeout=30)


def test_a_failed_run_fails_every_lookup_it_answers(tmp_path: Path) -> None:
    """squeue that cannot read its slurm.conf: each waiting lookup gets the error, none hangs."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=broken\nNotAKey=1\n")
    commands = CountingCommands(conf)

    async def lookups() -> list[object]:
        return list(
            await asyncio.gather(*(commands.job_record(j) for j in ("1", "2", "3")), return_exceptions=True)
        )

    results = asyncio.run(lookups())
    assert all(isinstance(r, SlurmCommandError) for r in results), results
    assert "squeue --jobs=1,2,3 failed" in str(results[0])
    assert len([a for a in commands.argvs if a[0] == "squeue"]) == 1


def test_the_nodes_of_a_running_one_node_job_take_one_command(dev_cluster: DevCluster) -> None:
    """A one-node job's NodeList is its node's name: no ``scontrol show hostnames`` to expand it."""
    argv = ["sbatch", "--parsable", "-N", "1", "-J", "nodes-1", "-o", "/dev/null", "--wrap", "sleep 60"]
    result = dev_cluster.run_as_job_user(argv, timeout=30)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    try:
        shown = dev_cluster.wait_for_job(job, ("RUNNING",))
        commands = CountingCommands(dev_cluster.slurm_conf)
        nodes = asyncio.run(commands.job_nodes(job))
        assert nodes.count == 1
        assert nodes.names == (shown["NodeList"],)
        assert [a[:3] for a in commands.argvs] == [("scontrol", "-o", "show")]
    finally:
        dev_cluster.run_slurm(["scancel", job], timeout=30)


def test_a_lookup_without_run_time_runs_no_scontrol(dev_cluster: DevCluster) -> None:
    """The bank's prolog needs no RunTime (the job is starting): one ``squeue``, no ``scontrol``."""
    job = _held_job(dev_cluster, "records-no-runtime")
    commands = CountingCommands(dev_cluster.slurm_conf)
    try:
        without = asyncio.run(commands.job_record(job, run_time=False))
        assert without is not None and without.job_id == int(job) and without.run_seconds is None
        assert [a[0] for a in commands.argvs] == ["squeue"]
        with_run_time = asyncio.run(commands.job_record(job))
        assert with_run_time is not None and with_run_time.run_seconds == 0
        assert [a[0] for a in commands.argvs] == ["squeue", "squeue", "scontrol"]
    finally:
        dev_cluster.run_slurm(["scancel", job], timeout=30)


def test_a_starting_job_is_read_alone_and_as_the_full_lookup_reads_it(dev_cluster: DevCluster) -> None:
    """The bank's prolog prices a job that is starting from a ``squeue`` of that job alone (22.05's
    ``--json`` prints the whole queue): the same numbers as the full lookup, times included."""
    queued = [_held_job(dev_cluster, f"records-queue-{i}") for i in range(3)]
    argv = ["sbatch", "--parsable", "-J", "a name | with Account=x", "--time=1-02:03:00", "-o", "/dev/null"]
    result = dev_cluster.run_as_job_user([*argv, "--wrap", "sleep 60"], timeout=30)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    commands = CountingCommands(dev_cluster.slurm_conf)
    try:
        dev_cluster.wait_for_job(job, ("RUNNING",))
        alone = asyncio.run(commands.job_alone(job))
        assert len(commands.argvs) == 1 and f"--jobs={job}" in commands.argvs[0]
        assert not any(a == "--json" for a in commands.argvs[0])
        full = asyncio.run(commands.job_record(job, run_time=False))
        assert alone is not None and full is not None
        assert alone.time_limit == 26 * 60 + 3
        priced = ("job_id", "cluster", "account", "user", "user_id", "partition", "qos", "time_limit")
        times = ("submit_time", "start_time", "end_time", "restart_count", "tres_alloc")
        for name in (*priced, *times):
            assert getattr(alone, name) == getattr(full, name), name
        unknown = str(int(job) + 100_000)
        assert asyncio.run(commands.job_alone(unknown)) is None
    finally:
        dev_cluster.run_slurm(["scancel", job, *queued], timeout=30)


def test_an_ended_job_is_read_alone_with_the_run_time_scontrol_shows(dev_cluster: DevCluster) -> None:
    """The bank's epilog charges the time a job used from a ``squeue`` of that job alone: the same
    seconds as scontrol's RunTime, and no second command."""
    argv = ["sbatch", "--parsable", "-J", "records-ended", "-o", "/dev/null", "--wrap", "sleep 2"]
    result = dev_cluster.run_as_job_user(argv, timeout=30)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    dev_cluster.wait_for_job(job, ("COMPLETED",))
    commands = CountingCommands(dev_cluster.slurm_conf)
    alone = asyncio.run(commands.job_alone(job))
    assert [a[0] for a in commands.argvs] == ["squeue"]
    full = asyncio.run(commands.job_record(job))
    assert alone is not None and full is not None
    assert alone.state == full.state == "COMPLETED"
    assert full.run_seconds is not None and full.run_seconds >= 2
    assert alone.run_seconds == full.run_seconds
    assert (alone.start_time, alone.end_time) == (full.start_time, full.end_time)


def test_a_noted_start_is_read_once_for_its_nodes_and_the_bank(dev_cluster: DevCluster) -> None:
    """At ``paths`` the gateway notes the job's start: one ``squeue`` of it then serves the compute
    nodes pre_run mounts on and the bank's prolog; a job whose start was not noted is read as before."""
    argv = ["sbatch", "--parsable", "-N", "1", "-J", "records-start", "-o", "/dev/null", "--wrap", "sleep 60"]
    result = dev_cluster.run_as_job_user(argv, timeout=30)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    commands = CountingCommands(dev_cluster.slurm_conf)
    try:
        shown = dev_cluster.wait_for_job(job, ("RUNNING",))

        async def start() -> tuple[object, object, object, str]:
            assert await commands.started_job(job) is None  # nothing noted yet
            assert await commands.started_line(job) == ""
            commands.note_start(job)
            first = await commands.job_nodes(job)
            return (
                first,
                await commands.started_job(job),
                await commands.job_nodes(job),
                await commands.started_line(job),
            )

        nodes, record, again, line = asyncio.run(start())
        assert [a[0] for a in commands.argvs] == ["squeue"]
        assert isinstance(record, JobRecord) and record.job_id == int(job) and record.state == "RUNNING"
        assert parse_job_line(line) == record  # what the gateway's front passes to the bank's prolog
        assert record.node_list == shown["NodeList"]
        assert nodes == again and getattr(nodes, "names", None) == (shown["NodeList"],)
        unnoted = CountingCommands(dev_cluster.slurm_conf)
        assert asyncio.run(unnoted.job_nodes(job)).names == (shown["NodeList"],)
        assert [a[:3] for a in unnoted.argvs] == [("scontrol", "-o", "show")]
    finally:
        dev_cluster.run_slurm(["scancel", job], timeout=30)
