"""What the generic API needs to know about one kind, and the per-kind strategy hooks.

Modelled on the Kubernetes generic registry: one REST layer for every kind, and all kind-specific
rules (defaults, validation, admission, printer columns, version conversion) in one small
``Strategy`` per kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slurmlink.resources.errors import Cause

if TYPE_CHECKING:
    from slurmlink.resources.admission import AdmissionContext

Obj = dict[str, Any]


@dataclass(frozen=True)
class PrinterColumn:
    """An ``additionalPrinterColumns`` entry: what ``kubectl get`` shows."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    format: str = ""


class Strategy:
    """Kind-specific behaviour. The defaults suit a plain kind with no rules."""

    #: Does ``/status`` exist as a separate subresource (so the main resource ignores status)?
    status_subresource: bool = False
    #: Fields present only in the storage version, kept when an older version's client writes.
    storage_only_paths: tuple[tuple[str, ...], ...] = ()

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        """Return ``obj`` in ``to_version``; ``api_version`` is the full group/version string."""
        out = dict(obj)
        out["apiVersion"] = api_version
        return out

    def default(self, obj: Obj) -> None:
        """Fill schema defaults in place (storage version)."""

    def validate_schema(self, obj: Obj) -> list[Cause]:
        """Structural checks, reported as 422 Invalid."""
        return []

    def mutate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Mutating admission on create."""

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Validating admission on create; raise an ApiError to deny."""

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        """Validating admission on update; raise an ApiError to deny."""

    def spec_changed(self, new: Obj, old: Obj) -> bool:
        """Whether ``metadata.generation`` should go up."""
        return any(new.get(k) != old.get(k) for k in set(new) | set(old) if k not in ("metadata", "status"))


@dataclass
class Kind:
    """Identity and serving facts of one resource kind."""

    group: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    versions: tuple[str, ...]
    storage_version: str
    strategy: Strategy = field(default_factory=Strategy)
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )

    @property
    def key(self) -> str:
        """Store key of this kind's objects: ``group/plural`` (``core/plural`` for the core group)."""
        return f"{self.group or 'core'}/{self.plural}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def preferred_version(self) -> str:
        return self.storage_version
