"""``slurmlink.io/v1`` ``StorageAllocation``: one file system (or one brick of one) on one storage node.

Placement (``burstbuffer.placement``) creates them, in the transaction that fills the DWS ``Servers``
of a directive, so capacity is taken exactly when the workload manager's choice is recorded; the
agent of ``spec.node`` makes the file system and reports it in ``status``. What a node has allocated
is the sum of ``spec.capacity`` over the StorageAllocations naming it — live or being deleted — so
capacity comes back once, when the agent has destroyed the file system and removed its finalizer
(``slurmlink.io/storage-node``) and the object is gone.

A job buffer's allocations belong to its ``Servers`` (deleted with the Workflow); a persistent
buffer's to its ``PersistentStorageInstance``. ``spec.index`` is the allocation's position in its
allocation set: for a per-compute type, allocation *i* is mounted on the job's *i*-th compute node.
For a shared type (``gluster``) every allocation of the set is one brick of one file system named
``spec.fileSystem``; ``spec.servers`` lists all of its bricks' nodes, in order, the first one
creating the volume once every brick is ready (each agent publishes its brick in ``status.brick``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

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
from slurmlink.resources.sizes import format_size
from slurmlink.resources.storage.group import GROUP, VERSION

#: Held by the storage node's agent until the file system is destroyed.
STORAGE_NODE_FINALIZER = "slurmlink.io/storage-node"
#: The states an agent reports.
State = Literal["Pending", "Ready", "Failed", "Deleting"]
_IMMUTABLE = ("node", "capacity", "fsType", "fileSystem", "index")


class StorageAllocationSpec(Open):
    capacity: Annotated[Int64, Field(ge=1)]
    fileSystem: StrictStr
    fsType: StrictStr
    groupID: Uint32
    index: Annotated[StrictInt, Field(ge=0)]
    lifetime: Literal["job", "persistent"]
    node: StrictStr
    pool: StrictStr
    servers: list[StrictStr] | None = None
    source: ObjectReference | None = None
    userID: Uint32


class StorageAllocationStatus(Open):
    #: The driver's record of the file system (``FileSystem.to_json``).
    fileSystem: dict[str, Any] | None = None
    #: ``gluster``: this node's brick once made (node, address, path, poolDir, ...), which the agent of
    #: the set's first node reads to make the volume.
    brick: dict[str, Any] | None = None
    message: StrictStr | None = None
    state: State


class StorageAllocationObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: StorageAllocationSpec | None = None
    status: StorageAllocationStatus | None = None


class StorageAllocationStrategy(Strategy):
    status_subresource = True
    structure = StorageAllocationObject
    field_labels = {
        "spec.node": field_of("spec", "node"),
        "spec.fsType": field_of("spec", "fsType"),
        "spec.pool": field_of("spec", "pool"),
        "spec.userID": field_of("spec", "userID"),
        "status.state": field_of("status", "state"),
    }

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": StorageAllocationSpec, "status": StorageAllocationStatus})

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        # What was placed stays placed: a moved or resized allocation would break the accounting.
        check_immutable(GROUP, "StorageAllocation", new, old, _IMMUTABLE)


def _capacity(obj: Obj) -> str | None:
    value = (obj.get("spec") or {}).get("capacity")
    return format_size(value) if isinstance(value, int) and not isinstance(value, bool) else None


def allocated_bytes(allocations: list[Obj], node: str) -> int:
    """What ``node`` has handed out: every allocation naming it, including those being deleted."""
    total = 0
    for obj in allocations:
        spec = obj.get("spec") or {}
        if spec.get("node") == node and isinstance(spec.get("capacity"), int):
            total += int(spec["capacity"])
    return total


STORAGE_ALLOCATION = Kind(
    group=GROUP,
    kind="StorageAllocation",
    plural="storageallocations",
    singular="storageallocation",
    namespaced=True,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=StorageAllocationStrategy(),
    short_names=("salloc",),
    access=job_object_access(user_id_is, node_writes=spec_node_is),
    printer_columns=(
        PrinterColumn("NODE", ".spec.node", "string", "Storage node"),
        PrinterColumn("TYPE", ".spec.fsType", "string", "File-system type"),
        PrinterColumn("CAPACITY", ".spec.capacity", "string", "Bytes allocated", value=_capacity),
        PrinterColumn("STATE", ".status.state", "string", "What the node's agent reports"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn("POOL", ".spec.pool", "string", "Pool", priority=1),
        PrinterColumn("MESSAGE", ".status.message", "string", "Why it is not Ready", priority=1),
    ),
)
