"""The DWS ``Storage`` kind: one storage node, its devices, capacity and health.

One per storage node, named after the node, in namespace ``default`` (where upstream's
SystemConfiguration controller creates them). The node's agent registers it and keeps its status
(role ``node-agent``: it may write only the Storage named after its own node); ``spec.state:
Disabled`` drains the node: nothing new is placed on it. Upstream labels each Storage with its
driver's type, ``dataworkflowservices.github.io/storage=<type>`` (e.g. ``Rabbit``).

v1alpha2 knows no ``Fenced`` status; the shapes are otherwise the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, StrictStr

from slurmlink.resources.access import READ, AccessPolicy, base_roles
from slurmlink.resources.dws.common import (
    NODE_WRITES,
    Int64,
    Open,
    ResourceStatus,
    section_causes,
    set_default,
)
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of

#: Upstream's label naming the driver a Storage belongs to.
STORAGE_TYPE_LABEL = f"{GROUP}/storage"
#: The namespace Storage objects live in, as upstream's.
STORAGE_NAMESPACE = "default"
#: Annotations slurmlink's node agent puts on its Storage (DWS has no fields for them): the node's
#: address (where file-system clients reach it), the pool directory on the node (where the
#: file-system drivers make each buffer), and the reason an admin gave for draining it.
ADDRESS_ANNOTATION = "slurmlink.io/address"
POOL_DIR_ANNOTATION = "slurmlink.io/pool-dir"
DRAIN_REASON_ANNOTATION = "slurmlink.io/drain-reason"


class StorageSpec(Open):
    mode: Literal["Live", "Testing"] = "Live"
    state: Literal["Enabled", "Disabled"] = "Enabled"


class StorageDevice(Open):
    capacity: Int64 | None = None
    firmwareVersion: StrictStr | None = None
    model: StrictStr | None = None
    serialNumber: StrictStr | None = None
    slot: StrictStr | None = None
    status: ResourceStatus | None = None
    wearLevel: Int64 | None = None


class StorageNode(Open):
    """Upstream's ``Node``: a server or compute that reaches the storage, and its status."""

    name: StrictStr | None = None
    status: ResourceStatus | None = None


class StorageAccess(Open):
    computes: list[StorageNode] | None = None
    protocol: Literal["PCIe"] | None = None
    servers: list[StorageNode] | None = None


class StorageStatus(Open):
    access: StorageAccess | None = None
    capacity: Int64 = 0
    devices: list[StorageDevice] | None = None
    message: StrictStr | None = None
    rebootRequired: bool | None = None
    status: ResourceStatus | None = None
    type: Literal["NVMe"] | None = None


class StorageObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: StorageSpec | None = None
    status: StorageStatus | None = None


class StorageStrategy(Strategy):
    status_subresource = True
    structure = StorageObject
    field_labels = {
        "spec.state": field_of("spec", "state"),
        "spec.mode": field_of("spec", "mode"),
        "status.status": field_of("status", "status"),
    }

    def default(self, obj: Obj) -> None:
        set_default(obj, "spec", "state", "Enabled")
        set_default(obj, "spec", "mode", "Live")
        set_default(obj, "status", "capacity", 0)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": StorageSpec, "status": StorageStatus}, required=("spec",))


def _named_after_node(obj: Obj, node: str) -> bool:
    return (obj.get("metadata") or {}).get("name") == node


STORAGE = Kind(
    group=GROUP,
    kind="Storage",
    plural="storages",
    singular="storage",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=StorageStrategy(),
    # Read by the workload manager and viewers; a node agent reads all and writes its own node's
    # (status included); users have no access.
    access=AccessPolicy(
        roles=base_roles(node_agent=READ),
        node_verbs=NODE_WRITES,
        node_writes=_named_after_node,
    ),
    printer_columns=(
        PrinterColumn("State", ".spec.state", "string", "State of the storage resource"),
        PrinterColumn("Status", ".status.status", "string", "Status of the storage resource"),
        PrinterColumn("Mode", ".spec.mode", "string", "State of live updates"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)
