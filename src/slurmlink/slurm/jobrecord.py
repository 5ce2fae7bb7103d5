"""One job as slurmctld reports it (``squeue --json`` plus ``scontrol``'s RunTime): what the bank's
hooks price a run from.

``squeue --json`` (Slurm 22.05's data_parser) has the allocation, times and run count; its time limit
is ``None`` when unlimited. Only ``scontrol show job``'s RunTime leaves out suspended time, so the
elapsed time comes from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from slurmlink import jsonutil
from slurmlink.bank.tres import TresError, array_task_count
from slurmlink.slurm.limits import LimitError, parse_minutes, parse_seconds


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    cluster: str
    account: str
    user: str
    user_id: int
    partition: str
    qos: str
    state: str
    #: Minutes; None when the job may run without limit.
    time_limit: int | None
    submit_time: int
    start_time: int
    end_time: int
    restart_count: int
    tres_alloc: str
    admin_comment: str
    array_job_id: int
    array_task_id: int | None
    #: Seconds it ran, suspended time excluded (scontrol's RunTime); None when not known.
    run_seconds: int | None = None
    #: A pending array's tasks not split off yet (``1-4``, ``5,7``); empty for other jobs.
    array_task_string: str = ""
    #: The nodes it was given, as Slurm writes them (``compute1``, ``compute[1-2]``); empty while
    #: pending, and when not read (``squeue --json`` lookups).
    node_list: str = ""

    @property
    def pending_tasks(self) -> int:
        """How many runs this record still stands for: an unsplit array's task count, else 1."""
        if self.array_task_id is None and self.array_task_string:
            try:
                return array_task_count(self.array_task_string)
            except TresError:
                return 1
        return 1


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, dict):  # later releases: {"set": true, "number": N}
        value = value.get("number") if value.get("set", True) else None
    if isinstance(value, bool) or value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _state(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "")


def parse_squeue_jobs(text: str) -> list[JobRecord]:
    """Every job of a ``squeue --json`` answer."""
    data = jsonutil.loads(text)
    records = []
    for job in data.get("jobs") or []:
        limit = job.get("time_limit")
        if isinstance(limit, dict):
            limit = limit.get("number") if limit.get("set", True) and not limit.get("infinite") else None
        records.append(
            JobRecord(
                job_id=_int(job.get("job_id")),
                cluster=str(job.get("cluster") or ""),
                account=str(job.get("account") or ""),
                user=str(job.get("user_name") or ""),
                user_id=_int(job.get("user_id"), -1),
                partition=str(job.get("partition") or ""),
                qos=str(job.get("qos") or ""),
                state=_state(job.get("job_state")),
                time_limit=None if limit is None else _int(limit),
                submit_time=_int(job.get("submit_time")),
                start_time=_int(job.get("start_time")),
                end_time=_int(job.get("end_time")),
                restart_count=_int(job.get("restart_cnt")),
                tres_alloc=str(job.get("tres_alloc_str") or ""),
                admin_comment=str(job.get("admin_comment") or ""),
                array_job_id=_int(job.get("array_job_id")),
                array_task_id=None if job.get("array_task_id") is None else _int(job.get("array_task_id")),
                array_task_string=str(job.get("array_task_string") or ""),
            )
        )
    return records


#: ``squeue --Format`` fields that describe one job for the bank's hooks, each printed with
#: :data:`LINE_SEPARATOR` after it. Only what Slurm itself checks (no job name or comment a user
#: writes), so the separator cannot turn up inside a value; times come as epoch seconds
#: (``SLURM_TIME_FORMAT=%s``), the time used as ``[D-]H:MM:SS``.
LINE_FIELDS = (
    "JobID",
    "Cluster",
    "Account",
    "UserName",
    "UserID",
    "Partition",
    "QOS",
    "State",
    "TimeLimit",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "RestartCnt",
    "TimeUsed",
    "NodeList",
    "tres-alloc",
)
LINE_SEPARATOR = "|"
#: What squeue prints for a string Slurm holds none of.
_UNSET = "(null)"


def line_format() -> str:
    """The ``--Format`` value for :func:`parse_job_line`."""
    return ",".join(f"{name}:{LINE_SEPARATOR}" for name in LINE_FIELDS)


def parse_job_line(line: str) -> JobRecord | None:
    """One job as ``squeue --jobs=ID --Format=<line_format()>`` printed it; None when the line is not
    one such (whoever asked then reads the job another way).

    It has what pricing and charging a run need, its time used (scontrol's RunTime) and its nodes
    included, but not the admin comment (22.05's ``--Format`` lacks it) nor an unsplit array's task
    list (a job that starts or ends is one task)."""
    values = line.rstrip("\n").split(LINE_SEPARATOR)
    if len(values) != len(LINE_FIELDS) + 1 or values[-1] != "":
        return None
    fields = dict(zip(LINE_FIELDS, (v.strip() for v in values), strict=False))
    numbers = ("JobID", "UserID", "SubmitTime", "RestartCnt")
    if not all(fields[name].isdigit() for name in numbers):
        return None
    start, end = _epoch(fields["StartTime"]), _epoch(fields["EndTime"])
    if start is None or end is None:
        return None
    limit = fields["TimeLimit"]
    minutes = parse_time_limit(limit)
    if minutes is None and limit not in ("UNLIMITED", "Partition_Limit"):
        return None
    # squeue prints INVALID for a time used it cannot tell; the charge then takes end - start.
    run_seconds = parse_run_time(fields["TimeUsed"])

    def text(name: str) -> str:
        return "" if fields[name] == _UNSET else fields[name]

    return JobRecord(
        job_id=int(fields["JobID"]),
        cluster=text("Cluster"),
        account=text("Account"),
        user=text("UserName"),
        user_id=int(fields["UserID"]),
        partition=text("Partition"),
        qos=text("QOS"),
        state=text("State"),
        time_limit=minutes,
        submit_time=int(fields["SubmitTime"]),
        start_time=start,
        end_time=end,
        restart_count=int(fields["RestartCnt"]),
        tres_alloc=text("tres-alloc"),
        admin_comment="",
        array_job_id=0,
        array_task_id=None,
        run_seconds=run_seconds,
        node_list=text("NodeList"),
    )


#: What squeue prints (``SLURM_TIME_FORMAT=%s``) for a time a job does not have yet or at all: a
#: pending job's start (N/A), an unlimited running job's end (NONE).
_NO_TIME = frozenset({"N/A", "NONE", "Unknown"})


def _epoch(text: str) -> int | None:
    """Epoch seconds; 0 for no such time, as ``squeue --json`` gives it; None for anything else."""
    if text.isdigit():
        return int(text)
    return 0 if text in _NO_TIME else None


def parse_time_limit(text: str) -> int | None:
    """Minutes of a time limit as ``squeue`` prints it; None for no limit (``UNLIMITED``,
    ``Partition_Limit``) or anything that is not a time."""
    try:
        return parse_minutes(text)
    except LimitError:
        return None


def parse_run_time(text: str) -> int | None:
    """A run time as Slurm prints it (``[D-]HH:MM:SS``, ``M:SS``) in seconds; None if it is not one."""
    try:
        return parse_seconds(text)
    except LimitError:
        return None


def run_time_of(scontrol_line: str) -> int | None:
    """RunTime from one ``scontrol -o show job`` line."""
    match = re.search(r"(?:^|\s)RunTime=(\S+)", scontrol_line)
    return parse_run_time(match.group(1)) if match else None
