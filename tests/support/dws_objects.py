"""Bodies of the DWS storage kinds and slurmlink's storage kinds, as drivers and agents write them.

Each ``KINDS`` entry: plural, namespace (None for cluster scope), a spec (or the top-level fields),
a status, and a spec patch to round-trip. Shapes follow upstream's CRDs (specs/dws.md §2.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

G = "dataworkflowservices.github.io"
GIB = 1024**3


@dataclass(frozen=True)
class Example:
    kind: str
    plural: str
    namespace: str | None
    spec: dict[str, Any]
    status: dict[str, Any]
    spec_patch: dict[str, Any]
    group: str = G
    #: The status as v1alpha2 shows it, where it differs.
    status_v1alpha2: dict[str, Any] | None = None
    columns: tuple[str, ...] = ()

    def path(self, version: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{version}"
        if self.namespace is not None:
            base += f"/namespaces/{self.namespace}"
        out = f"{base}/{self.plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out

    def body(self, version: str, name: str, **metadata: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{self.group}/{version}",
            "kind": self.kind,
            "metadata": {"name": name, **metadata},
            "spec": self.spec,
        }


SERVERS_REF = {"kind": "Servers", "name": "bb1", "namespace": "slurm"}

DIRECTIVE_BREAKDOWN = Example(
    "DirectiveBreakdown",
    "directivebreakdowns",
    "slurm",
    {"directive": "#DW jobdw type=xfs capacity=1GiB name=scratch", "userID": 1001},
    {
        "ready": True,
        "requires": ["copy-offload"],
        "storage": {
            "lifetime": "job",
            "reference": SERVERS_REF,
            "allocationSets": [
                {"allocationStrategy": "AllocatePerCompute", "label": "xfs", "minimumCapacity": GIB}
            ],
        },
        "compute": {
            "constraints": {
                "location": [
                    {"access": [{"type": "physical", "priority": "mandatory"}], "reference": SERVERS_REF}
                ]
            }
        },
    },
    {"directive": "#DW jobdw type=xfs capacity=2GiB name=scratch"},
    status_v1alpha2={
        "ready": True,
        "requiredDaemons": ["copy-offload"],
        "storage": {
            "lifetime": "job",
            "reference": SERVERS_REF,
            "allocationSets": [
                {"allocationStrategy": "AllocatePerCompute", "label": "xfs", "minimumCapacity": GIB}
            ],
        },
        "compute": {
            "constraints": {
                "location": [
                    {"access": [{"type": "physical", "priority": "mandatory"}], "reference": SERVERS_REF}
                ]
            }
        },
    },
    columns=("READY", "ERROR", "AGE"),
)

SERVERS = Example(
    "Servers",
    "servers",
    "slurm",
    {
        "allocationSets": [
            {"label": "xfs", "allocationSize": GIB, "storage": [{"name": "n1", "allocationCount": 2}]}
        ]
    },
    {
        "ready": True,
        "lastUpdate": "2026-01-02T03:04:05.123456Z",
        "allocationSets": [{"label": "xfs", "storage": {"n1": {"allocationSize": GIB, "ready": True}}}],
    },
    {
        "allocationSets": [
            {"label": "xfs", "allocationSize": 2 * GIB, "storage": [{"name": "n1", "allocationCount": 2}]}
        ]
    },
    status_v1alpha2={
        "ready": True,
        "lastUpdate": "2026-01-02T03:04:05.123456Z",
        "allocationSets": [{"label": "xfs", "storage": {"n1": {"allocationSize": GIB}}}],
    },
    columns=("READY", "ERROR", "AGE"),
)

STORAGE = Example(
    "Storage",
    "storages",
    "default",
    {"state": "Enabled", "mode": "Live"},
    {
        "capacity": 100 * GIB,
        "status": "Ready",
        "message": "loop file /var/lib/slurmlink/n1.img",
        "devices": [{"model": "loop", "capacity": 100 * GIB, "status": "Ready", "slot": "0"}],
        "access": {
            "servers": [{"name": "n1", "status": "Ready"}],
            "computes": [{"name": "c1", "status": "Ready"}],
        },
    },
    {"state": "Disabled"},
    columns=("State", "Status", "Mode", "Age"),
)

CLIENT_MOUNT = Example(
    "ClientMount",
    "clientmounts",
    "c1",
    {
        "node": "c1",
        "desiredState": "mounted",
        "mounts": [
            {
                "mountPath": "/mnt/dw/scratch",
                "userID": 1001,
                "groupID": 1001,
                "setPermissions": True,
                "options": "rw,noatime",
                "type": "xfs",
                "targetType": "directory",
                "compute": "c1",
                "device": {
                    "type": "reference",
                    "deviceReference": {"objectReference": SERVERS_REF, "data": 0},
                },
            }
        ],
    },
    {"allReady": True, "mounts": [{"state": "mounted", "ready": True}]},
    {"desiredState": "unmounted"},
    columns=("DESIREDSTATE", "READY", "ERROR", "AGE"),
)

PERSISTENT_STORAGE_INSTANCE = Example(
    "PersistentStorageInstance",
    "persistentstorageinstances",
    "slurm",
    {
        "name": "keep",
        "fsType": "gluster",
        "dwDirective": "#DW create_persistent type=gluster capacity=10GiB name=keep",
        "userID": 1001,
        "state": "Active",
    },
    {"state": "Active", "servers": SERVERS_REF},
    {"state": "Destroying"},
    columns=("ERROR", "AGE"),
)

SYSTEM_CONFIGURATION = Example(
    "SystemConfiguration",
    "systemconfigurations",
    "default",
    {
        "storageNodes": [{"type": "Rabbit", "name": "n1", "computesAccess": [{"name": "c1", "index": 0}]}],
        "externalComputeNodes": [{"name": "login1"}],
        "ports": [5000, "6000-6010"],
    },
    {"ready": True},
    {"portsCooldownInSeconds": 30},
    columns=("READY", "AGE"),
)

DWS_KINDS = (
    DIRECTIVE_BREAKDOWN,
    SERVERS,
    STORAGE,
    CLIENT_MOUNT,
    PERSISTENT_STORAGE_INSTANCE,
    SYSTEM_CONFIGURATION,
)
