"""The DWS ``SystemConfiguration`` kind: the storage nodes, the computes each reaches, and the ports
drivers may hand out.

Upstream keeps one, named ``default`` in namespace ``default``, and creates a ``Storage`` per
storage node from it. The v1alpha2 and v1alpha7 shapes are the same.
"""

from __future__ import annotations

from pydantic import BaseModel, StrictInt, StrictStr

from slurmlink.resources.access import default_policy
from slurmlink.resources.dws.common import Open, ResourceError, section_causes, set_default
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of


class ComputesAccess(Open):
    index: StrictInt
    name: StrictStr


class SystemConfigurationStorageNode(Open):
    computesAccess: list[ComputesAccess] | None = None
    name: StrictStr
    type: StrictStr


class ExternalComputeNode(Open):
    name: StrictStr


class SystemConfigurationSpec(Open):
    externalComputeNodes: list[ExternalComputeNode] | None = None
    #: A port (integer) or a range of ports ("START-END").
    ports: list[StrictInt | StrictStr] | None = None
    portsCooldownInSeconds: StrictInt = 60
    storageNodes: list[SystemConfigurationStorageNode] | None = None


class SystemConfigurationStatus(Open):
    error: ResourceError | None = None
    ready: bool


class SystemConfigurationObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: SystemConfigurationSpec | None = None
    status: SystemConfigurationStatus | None = None


class SystemConfigurationStrategy(Strategy):
    status_subresource = True
    structure = SystemConfigurationObject
    field_labels = {"status.ready": field_of("status", "ready")}

    def default(self, obj: Obj) -> None:
        set_default(obj, "spec", "portsCooldownInSeconds", 60)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": SystemConfigurationSpec, "status": SystemConfigurationStatus})


SYSTEM_CONFIGURATION = Kind(
    group=GROUP,
    kind="SystemConfiguration",
    plural="systemconfigurations",
    singular="systemconfiguration",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=SystemConfigurationStrategy(),
    access=default_policy(),
    printer_columns=(
        PrinterColumn("READY", ".status.ready", "boolean", "True if SystemConfiguration is reconciled"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
