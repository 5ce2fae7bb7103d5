"""``coordination.k8s.io/v1`` ``Lease``: the lock leader election takes, and node heartbeats.

Served like any kind so ``kubectl get leases -A`` shows who leads; the controllers' elector
(``controllers/leaderelection.py``) is only a client of it.

Node agents heartbeat as Kubernetes' kubelets do (the node-lease pattern): each renews a Lease named
after its node in :data:`NODE_LEASE_NAMESPACE` (``spec.renewTime``), cheap to write and watched by
the storage heartbeat controller. The ``node-agent`` role may get, create, update and patch that one
Lease and no other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from slurmlink.resources.access import AccessPolicy, base_roles
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy
from slurmlink.resources.schema import validate_part

GROUP = "coordination.k8s.io"
#: Where node agents keep their heartbeat Leases, one per node, named after it (Kubernetes keeps the
#: kubelets' in ``kube-node-lease``). The server creates it at start-up.
NODE_LEASE_NAMESPACE = "slurmlink-node-lease"
#: What a node agent may do with its own Lease: read it back after a restart, create it, renew it.
NODE_LEASE_VERBS = frozenset({"get", "create", "update", "patch"})


class LeaseSpec(BaseModel):
    """Kubernetes' ``LeaseSpec``; the times are MicroTime (RFC 3339 with microseconds)."""

    model_config = ConfigDict(extra="allow")
    holderIdentity: StrictStr | None = None
    leaseDurationSeconds: StrictInt | None = Field(default=None, gt=0)
    acquireTime: StrictStr | None = None
    renewTime: StrictStr | None = None
    leaseTransitions: StrictInt | None = Field(default=None, ge=0)
    strategy: StrictStr | None = None
    preferredHolder: StrictStr | None = None


class LeaseStrategy(Strategy):
    def validate_schema(self, obj: Obj) -> list[Cause]:
        return validate_part(LeaseSpec, obj.get("spec"), "spec")


def is_node_lease(obj: Obj, node: str) -> bool:
    """``obj`` is ``node``'s heartbeat Lease: named after it, in :data:`NODE_LEASE_NAMESPACE`."""
    m = obj.get("metadata") or {}
    return m.get("namespace") == NODE_LEASE_NAMESPACE and m.get("name") == node


LEASE = Kind(
    group=GROUP,
    kind="Lease",
    plural="leases",
    singular="lease",
    namespaced=True,
    versions=("v1",),
    storage_version="v1",
    strategy=LeaseStrategy(),
    # Admin everything, workload manager and viewer read (as every kind); a node agent its own
    # heartbeat Lease only (it may not list or watch leases, nor touch the leader's).
    access=AccessPolicy(roles=base_roles(), node_verbs=NODE_LEASE_VERBS, node_writes=is_node_lease),
    printer_columns=(
        PrinterColumn("Holder", ".spec.holderIdentity", "string", "The holder of the lease"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)
