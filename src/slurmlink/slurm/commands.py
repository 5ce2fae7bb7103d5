"""Slurm client commands the gateway runs (``scancel``, ``scontrol``, ``squeue``), without a shell.

Job ids are validated as digits before they reach an argument vector, and ``SLURM_CONF`` points the
commands at the cluster the gateway serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurmlink import jsonutil
from slurmlink.background import retrieve_exception
from slurmlink.slurm import slurmconf

if TYPE_CHECKING:
    from slurmlink.slurm.jobrecord import JobRecord

#: Slurm's compiled-in default StateSaveLocation.
DEFAULT_STATE_SAVE_LOCATION = Path("/var/spool/slurmctld")
_DIGITS = re.compile(r"^[0-9]+\Z")


class SlurmCommandError(RuntimeError):
    """A Slurm command could not be run or failed in an unexpected way."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


#: Job states after which Slurm runs no more callbacks for the job except a teardown already queued.
ENDED_JOB_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
#: BurstBufferStates of an ended job from which Slurm will call nothing more on its own: never staged in
#: (pending), torn down (complete), or a teardown Slurm started but dropped (``teardown``, e.g. when a
#: cancel's flush killed the very teardown the cancel queued).
SETTLED_BURST_BUFFER_STATES = frozenset({"", "pending", "teardown", "complete"})


@dataclass(frozen=True)
class JobStatus:
    """What slurmctld reports about one job: its base state and its burst buffer's state."""

    state: str
    burst_buffer_state: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED_JOB_STATES

    @property
    def burst_buffer_settled(self) -> bool:
        """The job has ended and Slurm will run no burst buffer callback for it unless one is running."""
        return self.ended and self.burst_buffer_state in SETTLED_BURST_BUFFER_STATES


def parse_squeue_json(text: str) -> dict[str, JobStatus]:
    """``squeue --json`` output to {job id: JobStatus}; Slurm 22.05 gives strings, later versions lists."""
    data = jsonutil.loads(text)
    found: dict[str, JobStatus] = {}
    for job in data.get("jobs") or []:
        state: Any = job.get("job_state", "")
        if isinstance(state, list):
            state = state[0] if state else ""
        found[str(job.get("job_id", ""))] = JobStatus(str(state), str(job.get("burst_buffer_state") or ""))
    return found


def _job_id(job_id: str) -> str:
    if not _DIGITS.match(job_id):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return job_id


def read_conf_value(slurm_conf: Path, key: str) -> str | None:
    """The value of ``key`` (case-insensitive) in slurm.conf (and its Includes), or None."""
    return slurmconf.read_value(slurm_conf, key)


@dataclass(frozen=True)
class JobNodes:
    """How many nodes a job asked for (or got), and their names once allocated."""

    count: int
    names: tuple[str, ...]


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 2.0) -> None:
    """Kill ``proc`` and reap it (briefly: a caller being cancelled must not hang here)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)


class JobRecordBatch:
    """Lookups of single jobs that arrive together answered by one ``squeue`` run.

    Slurm 22.05's ``squeue --json`` prints every job whatever ``--jobs`` says, so a run per lookup
    dumps and parses the whole queue each time; a scheduler pass starting dozens of jobs sends the
    bank's prolog for each at once. Lookups made while a run is under way wait for the next run,
    which asks for all of them: no answer ever comes from a run that started before it was asked.
    """

    def __init__(self, fetch: Callable[[list[str]], Awaitable[Mapping[str, JobRecord]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[str, list[asyncio.Future[JobRecord | None]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def lookup(self, job_id: str) -> JobRecord | None:
        future: asyncio.Future[JobRecord | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._fetch(sorted(batch))
            except Exception as exc:  # this run's lookups fail; later ones get a run of their own
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            except BaseException:  # cancelled: nobody is left to answer anyone
                for futures in (*batch.values(), *self._waiting.values()):
                    for future in futures:
                        future.cancel()
                self._waiting = {}
                raise
            for job_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(job_id))


#: How long the read of a job's start (:meth:`SlurmCommands.note_start`) serves what follows it, seconds.
START_KEPT = 60.0


def _one_node(node_list: str) -> bool:
    """Whether a NodeList names one node as it is (no ``compute[1-2]`` range, no comma list)."""
    return bool(node_list) and not set(node_list) & set("[],")


class SlurmCommands:
    """Runs Slurm's client commands against one cluster."""

    def __init__(self, slurm_conf: Path | None = None, timeout: float = 30.0) -> None:
        self.slurm_conf = slurm_conf
        self.timeout = timeout
        self._records = JobRecordBatch(self.job_records)
        #: Job id → (monotonic time, its read) for jobs slurmctld has just started (:meth:`note_start`).
        self._starts: dict[str, tuple[float, asyncio.Task[tuple[str, JobRecord | None]]]] = {}

    def state_save_location(self) -> Path:
        """Where slurmctld keeps job scripts (``hash.N/job.<id>/script``)."""
        conf = self.slurm_conf or Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
        value = read_conf_value(conf, "StateSaveLocation")
        return Path(value) if value else DEFAULT_STATE_SAVE_LOCATION

    def job_dir(self, job_id: str) -> Path:
        number = int(_job_id(job_id))
        return self.state_save_location() / f"hash.{number % 10}" / f"job.{number}"

    async def run(self, *argv: str, env_extra: dict[str, str] | None = None) -> CommandResult:
        env = {**os.environ, **(env_extra or {})}
        if self.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.slurm_conf)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise SlurmCommandError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SlurmCommandError(f"{' '.join(argv)} did not finish within {self.timeout:g} s") from None
        except BaseException:
            # Cancelled (the server is stopping): the command must not outlive it.
            await stop_process(proc)
            raise
        return CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    async def scancel_hurry(self, job_id: str) -> CommandResult:
        return await self.run("scancel", "--hurry", _job_id(job_id))

    async def job_statuses(self) -> dict[str, JobStatus] | None:
        """Every job slurmctld still holds, in one RPC; None when slurmctld cannot be asked."""
        try:
            result = await self.run("squeue", "--json", "--states=all")
        except SlurmCommandError:
            return None
        if result.returncode != 0:
            return None
        try:
            return parse_squeue_json(result.stdout)
        except (ValueError, AttributeError, TypeError):
            return None

    async def queued_jobs(self) -> list[JobRecord]:
        """Every pending and running job (squeue's default states), in one call."""
        from slurmlink.slurm.jobrecord import parse_squeue_jobs

        result = await self.run("squeue", "--json")
        if result.returncode != 0:
            raise SlurmCommandError(f"squeue failed: {result.stderr.strip() or result.returncode}")
        return parse_squeue_jobs(result.stdout)

    async def job_record(self, job_id: str, *, run_time: bool = True) -> JobRecord | None:
        """The job as slurmctld holds it, with its RunTime unless ``run_time`` is false (one
        ``scontrol`` less); None when slurmctld no longer knows it.

        Lookups made at the same time share one ``squeue`` run (``JobRecordBatch``).
        """
        from slurmlink.slurm.jobrecord import run_time_of

        job_id = _job_id(job_id)
        found = await self._records.lookup(job_id)
        if found is None or not run_time:
            return found
        shown = await self.run("scontrol", "-o", "show", "job", job_id)
        run_seconds = run_time_of(shown.stdout) if shown.returncode == 0 else None
        return dataclasses.replace(found, run_seconds=run_seconds)

    async def job_alone(self, job_id: str) -> JobRecord | None:
        """The job as :func:`~slurmlink.slurm.jobrecord.parse_job_line` reads it (its time used, no
        admin comment), from one ``squeue`` of that job alone; None when slurmctld no longer knows it.

        This is how the bank's hooks read a job that starts or ends: Slurm 22.05's ``squeue --json``
        would print the whole queue (hundreds of KB, under slurmctld's job lock) for each, and the
        prolog holds up the job's start. A line this cannot read falls back to :meth:`job_record`."""
        return (await self._read_alone(job_id))[1]

    async def _read_alone(self, job_id: str) -> tuple[str, JobRecord | None]:
        """:meth:`job_alone`'s job, with the ``squeue`` line it was read from ("" when it was read
        another way or not found), which another process can read again (:func:`parse_job_line`)."""
        from slurmlink.slurm.jobrecord import line_format, parse_job_line

        job_id = _job_id(job_id)
        result = await self.run(
            "squeue",
            f"--jobs={job_id}",
            "--states=all",
            "--noheader",
            f"--Format={line_format()}",
            env_extra={"SLURM_TIME_FORMAT": "%s"},
        )
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return "", None
            raise SlurmCommandError(f"squeue --jobs={job_id} failed: {result.stderr.strip()}")
        lines = result.stdout.splitlines()
        if not lines:
            return "", None
        record = parse_job_line(lines[0]) if len(lines) == 1 else None
        if record is None or record.job_id != int(job_id):
            return "", await self.job_record(job_id)
        return lines[0], record

    def note_start(self, job_id: str) -> None:
        """slurmctld has just given the job its nodes (burst_buffer's ``paths``): read it once now
        (:meth:`job_alone`), for what its start needs next to share. The compute nodes its buffers
        are mounted on (``pre_run``) and the bank's hold (PrologSlurmctld) each wanted a command of
        their own, while slurmctld held the job's start for both."""
        job_id = _job_id(job_id)
        now = time.monotonic()
        self._starts = {j: entry for j, entry in self._starts.items() if now - entry[0] < START_KEPT}
        earlier = self._starts.pop(job_id, None)
        if earlier is not None:
            earlier[1].cancel()  # a start that never went on (requeued): this one is read afresh
        task = asyncio.create_task(self._read_alone(job_id))
        task.add_done_callback(retrieve_exception)
        self._starts[job_id] = (now, task)

    async def _started(self, job_id: str) -> tuple[str, JobRecord | None]:
        entry = self._starts.get(_job_id(job_id))
        if entry is None or time.monotonic() - entry[0] >= START_KEPT:
            return "", None
        try:
            return await asyncio.shield(entry[1])
        except asyncio.CancelledError:
            if entry[1].cancelled():  # replaced by a later start, not this caller cancelled
                return "", None
            raise
        except Exception:
            return "", None

    async def started_job(self, job_id: str) -> JobRecord | None:
        """The job as read when its start was noted (:meth:`note_start`) in the last minute; None
        when it was not, or that read failed (the caller then reads the job itself)."""
        return (await self._started(job_id))[1]

    async def started_line(self, job_id: str) -> str:
        """The ``squeue`` line :meth:`started_job` was read from, for a process that did not read it
        (the gateway's worker, for the bank's prolog); "" when there is none."""
        return (await self._started(job_id))[0]

    async def job_records(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The jobs among ``job_ids`` slurmctld still holds (without RunTime), in one ``squeue`` run."""
        from slurmlink.slurm.jobrecord import parse_squeue_jobs

        wanted = {_job_id(j) for j in job_ids}
        listed = ",".join(sorted(wanted))
        result = await self.run("squeue", "--json", "--states=all", f"--jobs={listed}")
        if result.returncode != 0:
            if "Invalid job id" not in result.stderr:
                raise SlurmCommandError(f"squeue --jobs={listed} failed: {result.stderr.strip()}")
            if len(wanted) == 1:
                return {}
            found: dict[str, JobRecord] = {}
            for job_id in sorted(wanted):  # one of them is unknown: ask for each on its own
                found.update(await self.job_records([job_id]))
            return found
        # Slurm 22.05's squeue --json ignores --jobs and prints every job; later releases filter.
        return {str(r.job_id): r for r in parse_squeue_jobs(result.stdout) if str(r.job_id) in wanted}

    async def job_known(self, job_id: str) -> bool | None:
        """True/False if slurmctld knows/does not know the job; None when it cannot be asked."""
        try:
            result = await self.run("scontrol", "-o", "show", "job", _job_id(job_id))
        except SlurmCommandError:
            return None
        if result.returncode == 0:
            return True
        if "Invalid job id" in result.stderr or "Invalid job id" in result.stdout:
            return False
        return None

    async def job_nodes(self, job_id: str) -> JobNodes:
        """The job's node count and, once it has them, its nodes: from the read of its start when one
        node was all it got, else ``scontrol show job``."""
        started = await self.started_job(job_id)
        if started is not None and _one_node(started.node_list):
            return JobNodes(1, (started.node_list,))
        result = await self.run("scontrol", "-o", "show", "job", _job_id(job_id))
        if result.returncode != 0:
            raise SlurmCommandError(f"scontrol show job {job_id}: {(result.stderr or result.stdout).strip()}")
        fields = dict(
            word.split("=", 1) for word in result.stdout.split() if "=" in word and not word.startswith("=")
        )
        count_text = fields.get("NumNodes", "1").split("-", 1)[0]
        count = int(count_text) if count_text.isdigit() else 1
        node_list = fields.get("NodeList", "")
        if not node_list or node_list == "(null)":
            return JobNodes(count, ())
        if _one_node(node_list):  # named as it is: no second command to run
            return JobNodes(1, (node_list,))
        names = await self.run("scontrol", "show", "hostnames", node_list)
        if names.returncode != 0:
            raise SlurmCommandError(f"scontrol show hostnames {node_list}: {names.stderr.strip()}")
        hosts = tuple(line.strip() for line in names.stdout.splitlines() if line.strip())
        return JobNodes(len(hosts) or count, hosts)
