"""The DWS ``Computes`` kind: the compute nodes of a workflow (top-level ``data``, no spec or status)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr

from slurmlink.resources.access import default_policy
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, Strategy
from slurmlink.resources.schema import validate_part


class ComputesData(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr


class _Data(BaseModel):
    data: list[ComputesData]


class ComputesObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    data: list[ComputesData] | None = None


class ComputesStrategy(Strategy):
    structure = ComputesObject

    def validate_schema(self, obj: Obj) -> list[Cause]:
        if obj.get("data") is None:
            return []
        return [
            Cause(c.field.lstrip("."), c.message, c.reason)
            for c in validate_part(_Data, {"data": obj["data"]}, "")
        ]


COMPUTES = Kind(
    group=GROUP,
    kind="Computes",
    plural="computes",
    singular="computes",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=ComputesStrategy(),
    # DWS's workload-manager ClusterRole reads and updates Computes.
    access=default_policy(workload_manager=frozenset({"patch", "update"})),
)
