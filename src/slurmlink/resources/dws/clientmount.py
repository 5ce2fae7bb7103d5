"""The DWS ``ClientMount`` kind: the mounts one compute node must make (or undo) for a job.

Drivers create one per compute node of a job, in the namespace named after the node (upstream's
convention), marked with the Workflow's owner labels (an ownerReference cannot cross namespaces, so
the Workflow's finalizer deletes them by label). The node's agent (role ``node-agent``) performs the
mounts and reports each one's state in ``status``; it may write only the ClientMounts of its own
node: those in its node's namespace or whose ``spec.node`` is its node.

The v1alpha2 and v1alpha7 shapes are the same.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictStr

from slurmlink.resources.access import UnixAccount
from slurmlink.resources.dws.common import (
    ObjectReference,
    Open,
    ResourceError,
    Uint32,
    job_object_access,
    section_causes,
)
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of

MountState = Literal["mounted", "unmounted"]
#: Upstream's mount types plus slurmlink's file-system types (``common.SLURMLINK_FS_TYPES``).
MountType = Literal["lustre", "xfs", "gfs2", "none", "gluster", "dir"]


class LustreDevice(Open):
    fileSystemName: StrictStr
    mgsAddresses: StrictStr


class NvmeInfo(Open):
    deviceSerial: StrictStr
    namespaceGUID: StrictStr
    namespaceID: StrictStr


class LvmDevice(Open):
    deviceType: Literal["nvme"]
    logicalVolume: StrictStr | None = None
    nvmeInfo: list[NvmeInfo] | None = None
    volumeGroup: StrictStr | None = None


class DeviceReference(Open):
    data: int | None = None
    objectReference: ObjectReference


class ClientMountDevice(Open):
    deviceReference: DeviceReference | None = None
    lustre: LustreDevice | None = None
    lvm: LvmDevice | None = None
    type: Literal["lustre", "lvm", "reference"]


class ClientMountInfo(Open):
    compute: StrictStr | None = None
    device: ClientMountDevice
    groupID: Uint32 | None = None
    mountPath: StrictStr
    options: StrictStr
    setPermissions: bool
    targetType: Literal["file", "directory"]
    type: MountType
    userID: Uint32 | None = None


class ClientMountSpec(Open):
    desiredState: MountState
    mounts: Annotated[list[ClientMountInfo], Field(min_length=1)]
    node: StrictStr


class ClientMountInfoStatus(Open):
    ready: bool
    state: MountState


class ClientMountStatus(Open):
    allReady: bool
    error: ResourceError | None = None
    mounts: list[ClientMountInfoStatus]


class ClientMountObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: ClientMountSpec | None = None
    status: ClientMountStatus | None = None


class ClientMountStrategy(Strategy):
    status_subresource = True
    structure = ClientMountObject
    field_labels = {
        "spec.node": field_of("spec", "node"),
        "spec.desiredState": field_of("spec", "desiredState"),
        "status.allReady": field_of("status", "allReady"),
    }

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": ClientMountSpec, "status": ClientMountStatus})


def _mounts_for(obj: Obj, account: UnixAccount) -> bool:
    """A user reads the ClientMounts that mount something for them (``mounts[].userID``)."""
    spec = obj.get("spec")
    mounts = spec.get("mounts") if isinstance(spec, dict) else None
    return isinstance(mounts, list) and any(
        isinstance(m, dict) and m.get("userID") == account.uid for m in mounts
    )


def _of_node(obj: Obj, node: str) -> bool:
    """The ClientMounts of ``node``: in the namespace named after it, or with ``spec.node`` = it."""
    if (obj.get("metadata") or {}).get("namespace") == node:
        return True
    spec = obj.get("spec")
    return isinstance(spec, dict) and spec.get("node") == node


CLIENT_MOUNT = Kind(
    group=GROUP,
    kind="ClientMount",
    plural="clientmounts",
    singular="clientmount",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=ClientMountStrategy(),
    access=job_object_access(_mounts_for, node_writes=_of_node),
    printer_columns=(
        PrinterColumn("DESIREDSTATE", ".spec.desiredState", "string", "The desired state"),
        PrinterColumn("READY", ".status.allReady", "boolean", "True if desired state is achieved"),
        PrinterColumn("ERROR", ".status.error.severity", "string"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
