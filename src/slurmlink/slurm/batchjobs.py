"""Slurm batch jobs as the job bridge sees them: the ``sbatch`` command line for one job, every job
slurmctld holds in one ``scontrol`` call, the accounting's record of those it forgot, and the job's
phase from its Slurm state.

Nothing here builds a shell command: ``sbatch`` gets an argument vector, the script is a file in the
job's own directory, and the job's environment is the process environment of that ``sbatch`` (Slurm's
default ``--export=ALL``), built from scratch so nothing of the bridge's own leaks into a job.

Two Slurm facts shape the parsing: ``scontrol show job`` prints times in the local time zone without
saying so (the WLM operator read them as UTC, so its times were hours off), and only scontrol and sacct
give the exit code and signal apart (``ExitCode=0:15`` for a timeout); ``squeue --json`` on 22.05 folds
them into one number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from slurmlink.slurm.oneliner import parse_line

#: Slurm base states → the bridge's phases (docs/job-bridge.md). Anything unlisted is still in Slurm's
#: hands and counts as waiting.
QUEUED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "RESIZING"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"})
FAILED_STATES = frozenset(
    {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
)
ENDED_STATES = FAILED_STATES | {"COMPLETED", "CANCELLED"}
#: Among an array's ended tasks, the state reported for the whole job: the most telling failure first.
_ARRAY_OUTCOME_ORDER = (
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "FAILED",
    "CANCELLED",
    "COMPLETED",
)
#: What ``scontrol`` prints for a time it does not have.
_NO_TIME = frozenset({"", "Unknown", "None", "N/A", "(null)"})

#: The one call per tick: every job slurmctld holds (all users, all states), one line each.
SCONTROL_JOBS_ARGV = ("scontrol", "--all", "--oneliner", "show", "job")
#: sacct's fields, in this order, for jobs slurmctld has purged (``-X``: the allocation, not its steps).
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Submit", "Start", "End", "NodeList", "Partition")


def phase_of(state: str) -> str:
    """The bridge's phase for a Slurm base state (``CANCELLED by 0`` reads as ``CANCELLED``)."""
    base = state.split()[0] if state.strip() else ""
    if base in RUNNING_STATES:
        return "Running"
    if base == "COMPLETED":
        return "Succeeded"
    if base == "CANCELLED":
        return "Cancelled"
    if base in FAILED_STATES:
        return "Failed"
    return "Queued"


@dataclass(frozen=True)
class BatchRequest:
    """What one ``sbatch`` is asked for; None leaves an option out (the script's ``#SBATCH`` lines and
    Slurm's defaults then decide). Command-line options win over ``#SBATCH`` lines, as sbatch documents."""

    #: The script file; None: sbatch reads it from its standard input.
    script: Path | None
    work_dir: Path
    job_name: str
    #: The bridge's tag: found again in ``scontrol``/``sacct`` after a restart, so a job is never sent twice.
    comment: str
    partitions: tuple[str, ...] = ()
    nodes: int | None = None
    tasks: int | None = None
    cpus_per_task: int | None = None
    memory_per_node_mib: int | None = None
    memory_per_cpu_mib: int | None = None
    gpus: str | None = None
    gres: str | None = None
    constraints: str | None = None
    exclusive: bool = False
    #: Minutes; ``math.inf`` for ``UNLIMITED``; None to leave it to the script and the partition.
    time_limit: float | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    array: str | None = None
    hold: bool = False


def sbatch_argv(request: BatchRequest) -> list[str]:
    """``sbatch --parsable …`` for ``request``; every value is one argument (no shell ever sees them)."""
    argv = [
        "sbatch",
        "--parsable",
        f"--chdir={request.work_dir}",
        f"--job-name={request.job_name}",
        f"--comment={request.comment}",
    ]
    if request.partitions:
        argv.append(f"--partition={','.join(request.partitions)}")
    options: Sequence[tuple[str, object | None]] = (
        ("--nodes", request.nodes),
        ("--ntasks", request.tasks),
        ("--cpus-per-task", request.cpus_per_task),
        ("--mem", f"{request.memory_per_node_mib}M" if request.memory_per_node_mib else None),
        ("--mem-per-cpu", f"{request.memory_per_cpu_mib}M" if request.memory_per_cpu_mib else None),
        ("--gpus", request.gpus),
        ("--gres", request.gres),
        ("--constraint", request.constraints),
        ("--account", request.account),
        ("--qos", request.qos),
        ("--reservation", request.reservation),
        ("--array", request.array),
    )
    argv += [f"{flag}={value}" for flag, value in options if value is not None]
    if request.time_limit is not None:
        limit = request.time_limit
        argv.append("--time=UNLIMITED" if math.isinf(limit) else f"--time={int(limit)}")
    if request.exclusive:
        argv.append("--exclusive")
    if request.hold:
        argv.append("--hold")
    if request.script is not None:
        argv.append(str(request.script))
    return argv


def parse_job_id(stdout: str) -> str | None:
    """The job id ``sbatch --parsable`` printed (``123`` or ``123;cluster``), None if there is none."""
    for line in stdout.splitlines():
        head = line.strip().split(";", 1)[0]
        if head.isdigit():
            return head
    return None


def slurm_time(text: str) -> str | None:
    """A time as scontrol/sacct print it (local, no zone) in RFC 3339 UTC; None when Slurm has none."""
    value = text.strip()
    if value in _NO_TIME:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive means this host's local time, as Slurm printed it
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _exit(text: str) -> tuple[int | None, int | None]:
    code, _, signal = text.partition(":")
    try:
        return int(code), int(signal or 0)
    except ValueError:
        return None, None


def _none(text: str | None) -> str | None:
    return None if text in (None, "", "(null)", "None", "N/A") else text


@dataclass(frozen=True)
class JobState:
    """What Slurm says of a job's progress: its state, how it ended, where and when it ran."""

    job_id: str
    state: str
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    partition: str | None = None
    nodes: str | None = None
    submit_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    std_out: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


@dataclass(frozen=True)
class JobRecord(JobState):
    """One Slurm job (or array task) as scontrol or sacct reports it."""

    name: str = ""
    user_id: int | None = None
    comment: str | None = None
    work_dir: str | None = None
    #: The array this record belongs to, when it is one of an array's tasks (or the array's pending rest).
    array_job_id: str | None = None


def _uid(text: str) -> int | None:
    """``UserId=alice(1001)`` → 1001."""
    _, _, rest = text.partition("(")
    digits = rest.rstrip(")")
    return int(digits) if digits.isdigit() else None


def parse_scontrol_jobs(text: str) -> list[JobRecord]:
    """Every job of :data:`SCONTROL_JOBS_ARGV`'s output (``No jobs in the system`` is none)."""
    records = []
    for line in text.splitlines():
        fields = parse_line(line)
        if "JobId" not in fields:
            continue
        code, signal = _exit(fields.get("ExitCode", ""))
        array = fields.get("ArrayJobId")
        records.append(
            JobRecord(
                job_id=fields["JobId"],
                state=fields.get("JobState", "").split()[0] if fields.get("JobState") else "",
                name=fields.get("JobName", ""),
                user_id=_uid(fields.get("UserId", "")),
                comment=_none(fields.get("Comment")),
                reason=_none(fields.get("Reason")),
                exit_code=code,
                signal=signal,
                partition=_none(fields.get("Partition")),
                nodes=_none(fields.get("NodeList")),
                submit_time=slurm_time(fields.get("SubmitTime", "")),
                start_time=slurm_time(fields.get("StartTime", "")),
                end_time=slurm_time(fields.get("EndTime", "")),
                std_out=_none(fields.get("StdOut")),
                work_dir=_none(fields.get("WorkDir")),
                array_job_id=array if array and array != fields["JobId"] else None,
            )
        )
    return records


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    """One sacct call for ``job_ids`` (the allocations only, parsable, no header)."""
    return ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(SACCT_FIELDS)]


def parse_sacct_jobs(text: str) -> list[JobRecord]:
    """Lines of :func:`sacct_argv`'s output. An array's tasks come as ``123_4`` and count for ``123``."""
    records = []
    for line in text.splitlines():
        values = line.split("|")
        if len(values) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, values, strict=True))
        job_id, _, task = row["JobID"].partition("_")
        if not job_id.isdigit():
            continue
        code, signal = _exit(row["ExitCode"])
        records.append(
            JobRecord(
                job_id=row["JobID"],
                state=row["State"].split()[0] if row["State"].strip() else "",
                name=row["JobName"],
                exit_code=code,
                signal=signal,
                partition=_none(row["Partition"]),
                nodes=_none(row["NodeList"]) if row["NodeList"] != "None assigned" else None,
                submit_time=slurm_time(row["Submit"]),
                start_time=slurm_time(row["Start"]),
                end_time=slurm_time(row["End"]),
                array_job_id=job_id if task else None,
            )
        )
    return records


@dataclass(frozen=True)
class JobSummary(JobState):
    """One submitted job as the bridge reports it: an array's tasks folded into one state."""

    tasks: tuple[str, ...] = field(default=())

    @property
    def phase(self) -> str:
        return phase_of(self.state)


def summarize(job_id: str, records: Sequence[JobRecord]) -> JobSummary | None:
    """The summary of ``job_id`` from its records (itself, or an array's tasks); None without any.

    A plain job is its own record. An array is running while any task runs, waiting while any waits,
    and once all ended, COMPLETED only if every task completed, else its most telling failure, with
    the highest exit code among its tasks.
    """
    mine = [r for r in records if r.job_id == job_id or r.array_job_id == job_id]
    if not mine:
        return None
    if len(mine) == 1 and mine[0].array_job_id is None:
        r = mine[0]
        # An ended job's reason is how it ended (TIMEOUT, OUT_OF_MEMORY), as the bridge reports it.
        reason = r.state if r.ended and r.state != "COMPLETED" else r.reason
        return JobSummary(
            job_id, r.state, reason, r.exit_code, r.signal, r.partition, r.nodes,
            r.submit_time, r.start_time, r.end_time, r.std_out,
        )  # fmt: skip
    states = {r.state for r in mine}
    if states & RUNNING_STATES:
        state = "RUNNING"
    elif not states <= ENDED_STATES:
        state = "PENDING"
    else:
        state = next(s for s in _ARRAY_OUTCOME_ORDER if s in states)
    codes = [r.exit_code for r in mine if r.exit_code is not None]
    signals = [r.signal for r in mine if r.signal]
    starts = sorted(t for r in mine if (t := r.start_time))
    ends = sorted(t for r in mine if (t := r.end_time))
    nodes = sorted({n for r in mine if (n := r.nodes)})
    waiting = next((r.reason for r in mine if r.state not in ENDED_STATES and r.reason), None)
    first = mine[0]
    return JobSummary(
        job_id=job_id,
        state=state,
        reason=waiting if state not in ENDED_STATES else (state if state != "COMPLETED" else None),
        exit_code=max(codes) if codes else None,
        signal=max(signals) if signals else (0 if codes else None),
        partition=first.partition,
        nodes=",".join(nodes) or None,
        submit_time=first.submit_time,
        start_time=starts[0] if starts else None,
        end_time=ends[-1] if ends and state in ENDED_STATES else None,
        std_out=None,
        tasks=tuple(sorted(r.job_id for r in mine)),
    )
