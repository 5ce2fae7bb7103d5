"""The DWS ``Servers`` kind: where the storage of one directive was placed.

Created next to its ``DirectiveBreakdown`` (which owns it) and named after it. The workload manager
writes ``spec.allocationSets`` (per allocation set: the size of each allocation and how many go on
each ``Storage``); the driver reports in ``status`` what it has allocated.

v1alpha7 added ``status.allocationSets[].storage[<name>].ready``. A write in v1alpha2 cannot say it:
the stored value of the same allocation set and storage is kept (false for new entries), as
upstream's conversion restores it from its annotation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt, StrictStr

from slurmlink.resources.dws.common import (
    Int64,
    Open,
    ResourceError,
    job_object_access,
    section_causes,
)
from slurmlink.resources.dws.group import GROUP, STORAGE_VERSION, VERSIONS
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, field_of


class ServersSpecStorage(Open):
    allocationCount: Annotated[StrictInt, Field(ge=1)]
    name: StrictStr


class ServersSpecAllocationSet(Open):
    allocationSize: Annotated[Int64, Field(ge=1)]
    label: StrictStr
    storage: list[ServersSpecStorage]


class ServersSpec(Open):
    allocationSets: list[ServersSpecAllocationSet] | None = None


class ServersStatusStorage(Open):
    allocationSize: Int64
    ready: bool


class ServersStatusAllocationSet(Open):
    label: StrictStr
    storage: dict[str, ServersStatusStorage]


class ServersStatus(Open):
    allocationSets: list[ServersStatusAllocationSet] | None = None
    error: ResourceError | None = None
    lastUpdate: StrictStr | None = None
    ready: bool


class ServersObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: ServersSpec | None = None
    status: ServersStatus | None = None


def _status_storage(obj: Obj) -> list[dict[str, Any]] | None:
    """``status.allocationSets[].storage`` maps, or None when there are none to convert."""
    status = obj.get("status")
    sets = status.get("allocationSets") if isinstance(status, dict) else None
    if not isinstance(sets, list):
        return None
    out: list[dict[str, Any]] = []
    for aset in sets:
        storage = aset.get("storage") if isinstance(aset, dict) else None
        out.append(storage if isinstance(storage, dict) else {})
    return out


def _map_storage_entries(obj: Obj, fn: Any) -> Obj:
    """A copy of ``obj`` with every ``status.allocationSets[i].storage[name]`` entry replaced by
    ``fn(i, name, entry)``; nested values that do not change are shared."""
    status = obj["status"]
    sets = []
    for index, aset in enumerate(status["allocationSets"]):
        if isinstance(aset, dict) and isinstance(aset.get("storage"), dict):
            storage = {
                name: fn(index, name, entry) if isinstance(entry, dict) else entry
                for name, entry in aset["storage"].items()
            }
            aset = {**aset, "storage": storage}
        sets.append(aset)
    return {**obj, "status": {**status, "allocationSets": sets}}


class ServersStrategy(Strategy):
    status_subresource = True
    structure = ServersObject
    field_labels = {"status.ready": field_of("status", "ready")}

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        source = str(obj.get("apiVersion") or "")
        out = super().convert(obj, to_version, api_version)
        if _status_storage(out) is None:
            return out
        if to_version == "v1alpha2":
            return _map_storage_entries(out, lambda _i, _n, e: {k: v for k, v in e.items() if k != "ready"})
        if source == f"{GROUP}/v1alpha2":
            # Go's zero value; ``restore_storage_only`` brings back what was stored.
            return _map_storage_entries(out, lambda _i, _n, e: {**e, "ready": False})
        return out

    def restore_storage_only(self, new: Obj, old: Obj) -> None:
        new_maps, old_maps = _status_storage(new), _status_storage(old)
        if not new_maps or not old_maps:
            return
        for index, storage in enumerate(new_maps):
            if index >= len(old_maps):
                break
            for name, entry in storage.items():
                before = old_maps[index].get(name)
                if isinstance(entry, dict) and isinstance(before, dict) and "ready" in before:
                    entry["ready"] = before["ready"]

    def validate_schema(self, obj: Obj) -> list[Cause]:
        return section_causes(obj, {"spec": ServersSpec, "status": ServersStatus})


SERVERS = Kind(
    group=GROUP,
    kind="Servers",
    plural="servers",
    singular="servers",
    namespaced=True,
    versions=VERSIONS,
    storage_version=STORAGE_VERSION,
    strategy=ServersStrategy(),
    # A user reads the Servers of their own jobs: ``dws.ownership.adopt`` stamps them with the uid.
    access=job_object_access(),
    printer_columns=(
        PrinterColumn("READY", ".status.ready", "boolean", "True if allocation sets have been generated"),
        PrinterColumn("ERROR", ".status.error.severity", "string"),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
    ),
)
