"""The DWS ``DirectiveBreakdown`` kind: what storage (and compute placement) one ``#DW`` directive needs.

A driver creates one per storage directive of a Workflow in Proposal, owned by the Workflow, and
fills its status: the allocation sets the workload manager must place (strategy, minimum capacity,
constraints) and a reference to the ``Servers`` object the placement is written to. The workload
manager waits for ``status.ready``.

v1alpha2 calls ``status.requires`` ``status.requiredDaemons`` (renamed in v1alpha3) and has no
``AllocatePerServer`` strategy; the conversion renames the field both ways.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from slurmlink.resources.dws.common import (
    Int64,
    ObjectReference,
    Open,
    ResourceError,
    Uint32,
    job_object_access,
    section_causes,
    user_id_is,
)
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of

AllocationStrategy = Literal[
    "AllocatePerCompute", "AllocatePerServer", "AllocateAcrossServers", "AllocateSingleServer"
]
#: Upstream's allocation-set labels plus slurmlink's file-system types (``SLURMLINK_FS_TYPES``).
AllocationLabel = Literal["raw", "xfs", "gfs2", "mgt", "mdt", "mgtmdt", "ost", "gluster", "dir"]


class ColocationConstraint(Open):
    key: StrictStr
    type: Literal["exclusive"]


class AllocationSetConstraints(Open):
    colocation: list[ColocationConstraint] | None = None
    count: Annotated[StrictInt, Field(ge=1)] | None = None
    labels: list[StrictStr] | None = None
    scale: Annotated[StrictInt, Field(ge=1, le=10)] | None = None


class StorageAllocationSet(Open):
    allocationStrategy: AllocationStrategy
    constraints: AllocationSetConstraints | None = None
    label: AllocationLabel
    minimumCapacity: Annotated[Int64, Field(ge=1)]


class StorageBreakdown(Open):
    allocationSets: list[StorageAllocationSet] | None = None
    lifetime: Literal["job", "persistent"]
    reference: ObjectReference | None = None


class ComputeLocationAccess(Open):
    priority: Literal["mandatory", "bestEffort"]
    type: Literal["physical", "network"]


class ComputeLocationConstraint(Open):
    access: list[ComputeLocationAccess]
    reference: ObjectReference


class ComputeConstraints(Open):
    location: list[ComputeLocationConstraint] | None = None


class ComputeBreakdown(Open):
    constraints: ComputeConstraints | None = None


class DirectiveBreakdownSpec(Open):
    directive: StrictStr
    userID: Uint32


class DirectiveBreakdownStatus(Open):
    compute: ComputeBreakdown | None = None
    error: ResourceError | None = None
    ready: bool
    requires: list[StrictStr] | None = None
    storage: StorageBreakdown | None = None


class DirectiveBreakdownObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: DirectiveBreakdownSpec | None = None
    status: DirectiveBreakdownStatus | None = None


def _rename_status_field(obj: Obj, old: str, new: str) -> Obj:
    """``status.<old>`` becomes ``status.<new>``; a ``status.<new>`` already there is not part of the
    source version and goes (as the API server prunes fields a version does not declare)."""
    status = obj.get("status")
    if not isinstance(status, dict) or (old not in status and new not in status):
        return obj
    renamed = {k: v for k, v in status.items() if k not in (old, new)}
    if old in status:
        renamed[new] = status[old]
    return {**obj, "status": renamed}


class DirectiveBreakdownStrategy(Strategy):
    status_subresource = True
    structure = DirectiveBreakdownObject
    field_labels = {
        "spec.userID": field_of("spec", "userID"),
        "status.ready": field_of("status", "ready"),
    }

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        source = str(obj.get("apiVersion") or "")
        out = super().convert(obj, to_version, api_version)
        if to_version == "v1alpha2":
            return _rename_status_field(out, "requires", "requiredDaemons")
        if source == f"{GROUP}/v1alpha2":
            return _rename_status_field(out, "requiredDaemons", "requires")
        return out

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": DirectiveBreakdownSpec, "status": DirectiveBreakdownStatus})


DIRECTIVE_BREAKDOWN = Kind(
    group=GROUP,
    kind="DirectiveBreakdown",
    plural="directivebreakdowns",
    singular="directivebreakdown",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=DirectiveBreakdownStrategy(),
    access=job_object_access(user_id_is),
    printer_columns=(
        PrinterColumn("READY", ".status.ready", "boolean", "True if allocation sets have been generated"),
        PrinterColumn("ERROR", ".status.error.severity", "string"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
