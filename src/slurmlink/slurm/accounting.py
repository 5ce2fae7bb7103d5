"""Finished job runs from Slurm's accounting (``sacct -D``): what the bank's reconciler settles from.

``-D`` lists every run of a requeued job (each its own database record, in DBIndex order), so the
n-th record of a job is its run with restart count n. ``SLURM_TIME_FORMAT=%s`` makes sacct print times
as seconds since the epoch, whatever the host's time zone. ElapsedRaw leaves out suspended time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from slurmlink.slurm.commands import ENDED_JOB_STATES, SlurmCommandError, SlurmCommands

FIELDS = (
    "JobIDRaw",
    "DBIndex",
    "Cluster",
    "Account",
    "User",
    "Partition",
    "QOS",
    "State",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "AllocTRES",
)
#: States of a run that is over (sacct's spelling): slurmctld's, and REQUEUED for a requeued run.
ENDED = ENDED_JOB_STATES | {"REQUEUED"}


@dataclass(frozen=True)
class AccountedRun:
    job_id: int
    restart_count: int
    cluster: str
    account: str
    user: str
    partition: str
    qos: str
    state: str
    submit_time: int
    start_time: int
    end_time: int
    elapsed: int
    tres_alloc: str


def _int(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def parse_sacct(text: str) -> list[AccountedRun]:
    """``sacct -X -D -P -n -o FIELDS`` output; the restart count is the run's place among its job's
    records (by DBIndex). Runs that have not ended, or never started, are left out."""
    by_job: dict[int, list[dict[str, str]]] = {}
    for line in text.splitlines():
        values = line.split("|")
        if len(values) != len(FIELDS) or not values[0].isdigit():
            continue  # array/het records print ids like 12_3 and 12+0: their raw id is what counts
        row = dict(zip(FIELDS, values, strict=True))
        by_job.setdefault(int(row["JobIDRaw"]), []).append(row)
    runs = []
    for job_id, rows in by_job.items():
        rows.sort(key=lambda r: _int(r["DBIndex"]))
        for restart, row in enumerate(rows):
            state = row["State"].split(" ", 1)[0]  # "CANCELLED by 1000"
            if state not in ENDED or not _int(row["Start"]):
                continue
            runs.append(
                AccountedRun(
                    job_id=job_id,
                    restart_count=restart,
                    cluster=row["Cluster"],
                    account=row["Account"],
                    user=row["User"],
                    partition=row["Partition"],
                    qos=row["QOS"],
                    state=state,
                    submit_time=_int(row["Submit"]),
                    start_time=_int(row["Start"]),
                    end_time=_int(row["End"]),
                    elapsed=_int(row["ElapsedRaw"]),
                    tres_alloc=row["AllocTRES"],
                )
            )
    return runs


async def ended_runs(
    commands: SlurmCommands, seconds_back: int, job_ids: Iterable[int] = ()
) -> list[AccountedRun]:
    """Runs of the cluster that ended in the last ``seconds_back`` seconds (sacct takes relative times
    as ``now-N``, which keeps the host's time zone out of it)."""
    window = ["-S", f"now-{max(int(seconds_back), 1)}", "-E", "now"]
    argv = ["sacct", "-X", "-D", "-P", "-n", "-o", ",".join(FIELDS), *window]
    argv += ["--state", ",".join(sorted(ENDED))]
    ids = ",".join(str(i) for i in job_ids)
    if ids:
        argv += ["-j", ids]
    result = await commands.run(*argv, env_extra={"SLURM_TIME_FORMAT": "%s"})
    if result.returncode != 0:
        raise SlurmCommandError(f"sacct failed: {result.stderr.strip() or result.returncode}")
    return parse_sacct(result.stdout)
