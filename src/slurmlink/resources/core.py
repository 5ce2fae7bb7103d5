"""Core-group kinds served under ``/api/v1``: only ``Namespace``."""

from __future__ import annotations

from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy


class NamespaceStrategy(Strategy):
    status_subresource = True

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
