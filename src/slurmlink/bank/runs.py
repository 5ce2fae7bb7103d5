"""The job run a charge belongs to: the key every hook's write is idempotent by.

A Slurm job id alone does not name one run: a requeued job keeps its id and starts again
(``restart_cnt`` counts the runs), and ids wrap at ``MaxJobId``. The run key is cluster, job id,
restart count and the job's submit time (seconds since the epoch), so each run is held and settled
once, and a reused id after a wrap is a different run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slurmlink.bank.errors import InvalidRequest

_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TEXT = re.compile(r"^(?P<cluster>[^:]+):(?P<job>\d+):(?P<restart>\d+):(?P<submit>\d+)$")


@dataclass(frozen=True, order=True)
class RunKey:
    cluster: str
    job_id: int
    restart_count: int = 0
    submit_time: int = 0

    def __post_init__(self) -> None:
        if not _CLUSTER.match(self.cluster):
            raise InvalidRequest(f"cluster name {self.cluster!r} is not a Slurm cluster name")
        for field, value in (
            ("job id", self.job_id),
            ("restart count", self.restart_count),
            ("submit time", self.submit_time),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"{field} must be a whole number ≥ 0, not {value!r}")
        if self.job_id == 0:
            raise InvalidRequest("job id must be greater than 0")

    @property
    def text(self) -> str:
        """``cluster:job:restart:submit``, as stored and as the API and CLI take it."""
        return f"{self.cluster}:{self.job_id}:{self.restart_count}:{self.submit_time}"

    @classmethod
    def parse(cls, text: str) -> RunKey:
        match = _TEXT.match(text.strip())
        if not match:
            raise InvalidRequest(
                f"run {text!r} is not CLUSTER:JOBID:RESTARTCOUNT:SUBMITTIME "
                "(e.g. mycluster:1234:0:1733300000)"
            )
        return cls(match["cluster"], int(match["job"]), int(match["restart"]), int(match["submit"]))

    def __str__(self) -> str:
        return self.text
