"""``slurmlink.io/v1`` ``DataMovement``: one copy into or out of a burst buffer, run as the job's user.

The burst-buffer driver creates one per staging directive (``#DW copy_in``/``copy_out``, DataWarp's
``stage_in``/``stage_out``) and per file system the copy touches: a per-compute buffer (``xfs``)
gets one per compute node's allocation, a shared one (``gluster``) one in all. Each is owned by the
job's Workflow and deleted with it.

An end of the copy is a plain path, or a path inside a buffer: ``allocation`` names the
``StorageAllocation`` whose file system holds it and ``path`` is relative to that file system's root
(what ``$DW_JOB_<name>`` is on a compute node). The agent of ``spec.node`` (the allocation's storage
node) mounts that file system, runs the copy with the job's uid and gid (``slurmlink.mover``), and
reports progress in ``status``; ``spec.cancel`` stops it. ``status.state`` goes Pending → Running →
Finished and, once Finished, ``status.status`` says Success, Failed (``message`` says why, in the
mover's words, for ``scontrol show job``) or Cancelled. NNF's ``NnfDataMovement`` has the same states.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.dws.common import (
    Int64,
    ObjectReference,
    Open,
    Uint32,
    check_immutable,
    job_object_access,
    section_causes,
    spec_node_is,
    user_id_is,
)
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of
from slurmlink.resources.sizes import approximate_size
from slurmlink.resources.storage.group import GROUP, VERSION

State = Literal["Pending", "Running", "Finished"]
Outcome = Literal["Success", "Failed", "Cancelled"]
#: How the mover reads ``source`` (``slurmlink.mover.CopySpec.mode``).
Mode = Literal["auto", "file", "directory", "list"]
#: Everything but ``cancel`` is fixed once created: the agent may be half-way through the copy.
_IMMUTABLE = ("source", "destination", "mode", "node", "userID", "groupID", "direction", "inPlace")


class Endpoint(Open):
    #: Absolute, or relative to the allocation's file system when ``allocation`` is set.
    path: StrictStr
    allocation: ObjectReference | None = None


class DataMovementSpec(Open):
    source: Endpoint
    destination: Endpoint
    mode: Mode = "auto"
    #: ``in`` (into a buffer, DataIn) or ``out`` (DataOut).
    direction: Literal["in", "out"]
    node: StrictStr
    userID: Uint32
    groupID: Uint32
    cancel: StrictBool = False
    #: Write files under their own names, without a temporary name renamed at the end: for a copy
    #: into a job's own buffer before the job starts, which nobody reads meanwhile (the driver sets it).
    inPlace: StrictBool = False
    #: The directive as the user wrote it, and its place in the job's list.
    directive: StrictStr | None = None
    directiveIndex: Annotated[StrictInt, Field(ge=0)] | None = None


class DataMovementStatus(Open):
    state: State = "Pending"
    status: Outcome | None = None
    message: StrictStr | None = None
    filesTotal: Int64 | None = None
    filesDone: Int64 | None = None
    filesSkipped: Int64 | None = None
    directories: Int64 | None = None
    links: Int64 | None = None
    bytesTotal: Int64 | None = None
    bytesDone: Int64 | None = None
    checksumsVerified: Int64 | None = None
    #: Devices, fifos and sockets in the source, not copied.
    specialsSkipped: Int64 | None = None
    seconds: float | None = None
    #: Bytes per second over the copy so far.
    rate: float | None = None
    startTime: StrictStr | None = None
    endTime: StrictStr | None = None
    #: Times the copy was started again after its agent restarted (verified files are not copied again).
    restarts: Annotated[StrictInt, Field(ge=0)] | None = None


class DataMovementObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: DataMovementSpec | None = None
    status: DataMovementStatus | None = None


class DataMovementStrategy(Strategy):
    status_subresource = True
    structure = DataMovementObject
    field_labels = {
        "spec.node": field_of("spec", "node"),
        "spec.userID": field_of("spec", "userID"),
        "spec.direction": field_of("spec", "direction"),
        "status.state": field_of("status", "state"),
        "status.status": field_of("status", "status"),
    }

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": DataMovementSpec, "status": DataMovementStatus})

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        check_immutable(GROUP, "DataMovement", new, old, _IMMUTABLE)
        if (old.get("spec") or {}).get("cancel") and not (new.get("spec") or {}).get("cancel"):
            name = (new.get("metadata") or {}).get("name", "")
            cause = Cause("spec.cancel", "a cancelled copy stays cancelled", "FieldValueInvalid")
            raise errors.invalid(GROUP, "DataMovement", name, [cause])


def finished(obj: Obj) -> bool:
    return (obj.get("status") or {}).get("state") == "Finished"


def endpoint_text(endpoint: Any) -> str:
    """An end of the copy as people read it: ``path`` or ``<allocation>:<path>``."""
    if not isinstance(endpoint, dict):
        return ""
    ref = endpoint.get("allocation") or {}
    path = str(endpoint.get("path") or "")
    return f"{ref.get('name')}:{path or '/'}" if ref.get("name") else path


def _bytes(obj: Obj) -> str | None:
    status = obj.get("status") or {}
    done, total = status.get("bytesDone"), status.get("bytesTotal")
    if not isinstance(done, int):
        return None
    return (
        f"{approximate_size(done)}/{approximate_size(total)}"
        if isinstance(total, int)
        else approximate_size(done)
    )


def _files(obj: Obj) -> str | None:
    status = obj.get("status") or {}
    done, total = status.get("filesDone"), status.get("filesTotal")
    if not isinstance(done, int):
        return None
    return f"{done}/{total}" if isinstance(total, int) else str(done)


def _rate(obj: Obj) -> str | None:
    rate = (obj.get("status") or {}).get("rate")
    return f"{approximate_size(rate)}/s" if isinstance(rate, int | float) and rate >= 0 else None


DATA_MOVEMENT = Kind(
    group=GROUP,
    kind="DataMovement",
    plural="datamovements",
    singular="datamovement",
    namespaced=True,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=DataMovementStrategy(),
    short_names=("dm",),
    access=job_object_access(user_id_is, node_writes=spec_node_is),
    printer_columns=(
        PrinterColumn("DIRECTION", ".spec.direction", "string", "in: into a buffer; out: out of one"),
        PrinterColumn("NODE", ".spec.node", "string", "Storage node that runs the copy"),
        PrinterColumn("STATE", ".status.state", "string", "Pending, Running or Finished"),
        PrinterColumn("STATUS", ".status.status", "string", "Success, Failed or Cancelled"),
        PrinterColumn("FILES", ".status.filesDone", "string", "Files copied (of all)", value=_files),
        PrinterColumn("BYTES", ".status.bytesDone", "string", "Bytes copied (of all)", value=_bytes),
        PrinterColumn("RATE", ".status.rate", "string", "Bytes per second", value=_rate),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn(
            "SOURCE", ".spec.source.path", "string", "From", priority=1, value=lambda o: _end(o, "source")
        ),
        PrinterColumn(
            "DESTINATION",
            ".spec.destination.path",
            "string",
            "To",
            priority=1,
            value=lambda o: _end(o, "destination"),
        ),
        PrinterColumn("MESSAGE", ".status.message", "string", "Why it failed", priority=1),
    ),
)


def _end(obj: Obj, which: str) -> str:
    return endpoint_text((obj.get("spec") or {}).get(which))
