"""``coordination.k8s.io/v1`` ``Lease``: the lock leader election takes, as in Kubernetes.

Served like any kind so ``kubectl get leases -A`` shows who leads; the controllers' elector
(``controllers/leaderelection.py``) is only a client of it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy
from slurmlink.resources.schema import validate_part

GROUP = "coordination.k8s.io"


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


LEASE = Kind(
    group=GROUP,
    kind="Lease",
    plural="leases",
    singular="lease",
    namespaced=True,
    versions=("v1",),
    storage_version="v1",
    strategy=LeaseStrategy(),
    printer_columns=(
        PrinterColumn("Holder", ".spec.holderIdentity", "string", "The holder of the lease"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)
