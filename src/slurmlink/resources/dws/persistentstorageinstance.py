"""The DWS ``PersistentStorageInstance`` kind: a named buffer that outlives the jobs using it.

Created for ``#DW create_persistent`` (owned by that Workflow until its teardown hands it over, as
upstream's driver does), referenced by the jobs that use it (``spec.consumerReferences``), and
destroyed by ``#DW destroy_persistent`` (``spec.state: Destroying``). ``spec.userID`` is the
creating user, who may read it (role ``user``).

v1alpha2 knows no ``Degraded`` status state; the shapes are otherwise the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, StrictStr

from slurmlink.resources.dws.common import (
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

#: Upstream's file-system types plus slurmlink's (``common.SLURMLINK_FS_TYPES``).
FsType = Literal["raw", "xfs", "gfs2", "lustre", "gluster", "dir"]


class PersistentStorageInstanceSpec(Open):
    consumerReferences: list[ObjectReference] | None = None
    dwDirective: StrictStr
    fsType: FsType
    name: StrictStr
    state: Literal["Active", "Destroying"]
    userID: Uint32


class PersistentStorageInstanceStatus(Open):
    error: ResourceError | None = None
    servers: ObjectReference | None = None
    state: Literal["Creating", "Active", "Destroying", "Degraded"]


class PersistentStorageInstanceObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: PersistentStorageInstanceSpec | None = None
    status: PersistentStorageInstanceStatus | None = None


class PersistentStorageInstanceStrategy(Strategy):
    status_subresource = True
    structure = PersistentStorageInstanceObject
    field_labels = {
        "spec.name": field_of("spec", "name"),
        "spec.fsType": field_of("spec", "fsType"),
        "spec.state": field_of("spec", "state"),
        "spec.userID": field_of("spec", "userID"),
        "status.state": field_of("status", "state"),
    }

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(
            obj, {"spec": PersistentStorageInstanceSpec, "status": PersistentStorageInstanceStatus}
        )


PERSISTENT_STORAGE_INSTANCE = Kind(
    group=GROUP,
    kind="PersistentStorageInstance",
    plural="persistentstorageinstances",
    singular="persistentstorageinstance",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=PersistentStorageInstanceStrategy(),
    access=job_object_access(user_id_is),
    printer_columns=(
        PrinterColumn("ERROR", ".status.error.severity", "string"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
