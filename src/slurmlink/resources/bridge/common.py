"""What both SlurmJob kinds share: the group, the status a bridge writes, and the rules for paths
inside a job's directory.

The status schema is one for ``slurmlink.io/v1`` and the seed's ``wlm.sylabs.io/v1alpha1``, so the
bridge controller reports a job the same way whichever API it came in by; the seed's kind adds its
``status.status``. Paths a job names inside its own directory (where inputs land, which outputs are
collected) are checked here, at admission, so a job that could reach outside its directory never
gets as far as a controller.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StrictStr

from slurmlink.resources.dws.common import Int64, Open
from slurmlink.resources.errors import Cause
from slurmlink.resources.quantity import QuantityError, parse_quantity
from slurmlink.resources.storage.group import GROUP, VERSION
from slurmlink.resources.storage.storagepool import Condition

__all__ = ["GROUP", "VERSION", "Condition"]

Phase = Literal[
    "Pending", "Staging", "Queued", "Running", "Collecting", "Succeeded", "Failed", "Cancelled", "Unknown"
]
#: Phases after which nothing more happens to a job.
FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
NonNegative = Annotated[Int64, Field(ge=0)]


class JobOutput(Open):
    """One collected file: its path relative to the job directory, size and digest."""

    path: StrictStr
    sha256: StrictStr
    size: NonNegative


class JobStatus(Open):
    """What the bridge reports about one job (written through ``/status`` only)."""

    cluster: StrictStr | None = None
    conditions: list[Condition] | None = None
    endTime: StrictStr | None = None
    #: The job's exit code and, when a signal ended it, the signal (scontrol's ``ExitCode=a:b``).
    exitCode: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    jobId: StrictStr | None = None
    message: StrictStr | None = None
    nodes: StrictStr | None = None
    observedGeneration: StrictInt | None = None
    outputs: list[JobOutput] | None = None
    partition: StrictStr | None = None
    phase: Phase | None = None
    reason: StrictStr | None = None
    signal: Annotated[StrictInt, Field(ge=0, le=255)] | None = None
    slurmState: StrictStr | None = None
    startTime: StrictStr | None = None
    #: The job's output file, as Slurm expanded it (``slurm-%j.out`` in the job directory by default).
    stdoutPath: StrictStr | None = None
    submitTime: StrictStr | None = None
    #: The job's directory on the cluster's shared file system.
    workDir: StrictStr | None = None


def status_causes(status: object, prefix: str = "status") -> list[Cause]:
    """Checks of a status beyond its types: digests are lowercase hex SHA-256, output paths relative."""
    causes: list[Cause] = []
    if not isinstance(status, dict):
        return causes
    for i, output in enumerate(status.get("outputs") or []):
        if not isinstance(output, dict):
            continue
        digest = output.get("sha256")
        if isinstance(digest, str) and not _SHA256.match(digest):
            causes.append(
                Cause(
                    f"{prefix}.outputs[{i}].sha256",
                    f"Invalid value: {json.dumps(digest)}: must be 64 lowercase hexadecimal digits",
                )
            )
        path = output.get("path")
        if isinstance(path, str) and (error := relative_path_error(path)):
            causes.append(Cause(f"{prefix}.outputs[{i}].path", f"Invalid value: {json.dumps(path)}: {error}"))
    return causes


def relative_path_error(path: str, *, glob: bool = False) -> str | None:
    """Why ``path`` cannot name something inside a job's directory (None when it can).

    Relative, no ``..`` component, no NUL, not empty. Checked on the text as written: the controller
    still resolves every path without following links out of the directory, since a job may make
    links of its own.
    """
    what = "a glob" if glob else "a path"
    if not path:
        return f"{what} inside the job directory must not be empty"
    if "\x00" in path:
        return f"{what} must not contain a NUL character"
    if path.startswith("/"):
        return f"must be {what} relative to the job directory, not an absolute path"
    if ".." in path.split("/"):
        return f"must not contain '..': {what} cannot leave the job directory"
    if not glob and posixpath.normpath(path).startswith("../"):
        return f"must not contain '..': {what} cannot leave the job directory"
    return None


def sha256_error(value: str) -> str | None:
    return None if _SHA256.match(value) else "must be 64 lowercase hexadecimal digits"


def invalid_value(path: str, value: Any, why: str) -> Cause:
    """The API server's ``Invalid value`` cause."""
    return Cause(path, f"Invalid value: {json.dumps(value)}: {why}")


def quantity_causes(path: str, value: Any) -> list[Cause]:
    """A memory quantity: it parses, and it is more than zero."""
    if value is None:
        return []
    try:
        amount = parse_quantity(value)
    except QuantityError as exc:
        return [invalid_value(path, value, str(exc))]
    if amount <= 0:
        return [invalid_value(path, value, "must be greater than zero")]
    return []
