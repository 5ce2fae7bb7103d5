"""Core-group kinds served under ``/api/v1``: only ``Namespace``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, dns_label_causes


class _NamespaceSpec(BaseModel):
    finalizers: list[str] | None = None


class _NamespaceStatus(BaseModel):
    phase: str | None = None
    conditions: list[dict[str, Any]] | None = None


class NamespaceObject(BaseModel):
    spec: _NamespaceSpec | None = None
    status: _NamespaceStatus | None = None


class NamespaceStrategy(Strategy):
    status_subresource = True
    structure = NamespaceObject

    def validate_name(self, name: str) -> list[Cause]:
        return dns_label_causes(name)

    def default(self, obj: Obj) -> None:
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj["status"] = {"phase": "Terminating" if obj["metadata"].get("deletionTimestamp") else "Active"}


NAMESPACE = Kind(
    group="",
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    versions=("v1",),
    storage_version="v1",
    strategy=NamespaceStrategy(),
    short_names=("ns",),
    printer_columns=(
        PrinterColumn("Status", ".status.phase", "string", "The status of the namespace"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
    verbs=("create", "get", "list", "watch"),
)
