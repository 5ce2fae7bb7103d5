"""What the generic API needs to know about one kind, and the per-kind strategy hooks.

Modelled on the Kubernetes generic registry: one REST layer for every kind, and all kind-specific
rules (defaults, validation, admission, printer columns, version conversion) in one small
``Strategy`` per kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from slurmlink.resources.access import AccessPolicy, Scope
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
    #: Computes the cell instead of ``json_path`` (built-in kinds' printers, e.g. a count of keys).
    value: Callable[[Obj], Any] | None = field(default=None, compare=False)


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def dns_subdomain_causes(name: str) -> list[Cause]:
    """The API server's rule for most object names: a lowercase RFC 1123 subdomain."""
    if len(name) <= 253 and _DNS_SUBDOMAIN.match(name):
        return []
    text = (
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
        "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
        "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
    return [Cause("metadata.name", f"Invalid value: {json.dumps(name)}: {text}")]


def dns_label_causes(name: str) -> list[Cause]:
    """The rule for names that become DNS labels (namespaces)."""
    if len(name) <= 63 and _DNS_LABEL.match(name):
        return []
    text = (
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
        "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    )
    return [Cause("metadata.name", f"Invalid value: {json.dumps(name)}: {text}")]


FieldGetter = Callable[[Obj], str]


def field_of(*path: str) -> FieldGetter:
    """A field-selector attribute: the value at ``path`` as a string ("" when absent)."""

    def get(obj: Obj) -> str:
        cur: Any = obj
        for part in path:
            if not isinstance(cur, dict):
                return ""
            cur = cur.get(part)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


class Strategy:
    """Kind-specific behaviour. The defaults suit a plain kind with no rules.

    The service calls the hooks in Kubernetes' order: on create ``validate_name``, ``default``,
    ``mutate_create``, pruning by ``structure``, ``validate_schema``, ``validate_create``; on update
    ``default``, ``mutate_update``, pruning, ``validate_schema_update``, ``validate_update``; on delete
    ``validate_delete``.
    """

    #: Does ``/status`` exist as a separate subresource? Then writes to the main resource keep the
    #: stored status and writes to ``/status`` change nothing else.
    status_subresource: bool = False
    #: Serve ``/status`` (writes there change only status) while the main resource keeps accepting
    #: status too: DWS's Workflow, whose CRD has no status subresource but whose tools may use one.
    status_alias: bool = False
    #: Fields present only in the storage version, kept when an older version's client writes.
    storage_only_paths: tuple[tuple[str, ...], ...] = ()
    #: Field-selector attributes beyond ``metadata.name`` and ``metadata.namespace``.
    field_labels: Mapping[str, FieldGetter] = {}
    #: The structural schema of everything but ``apiVersion``/``kind``/``metadata``: fields it does
    #: not declare are pruned (``fieldValidation=Strict`` rejects them). None keeps every field.
    structure: type[BaseModel] | None = None

    @property
    def serves_status(self) -> bool:
        """Whether ``/status`` exists for this kind (and discovery lists it)."""
        return self.status_subresource or self.status_alias

    def validate_name(self, name: str) -> list[Cause]:
        """``metadata.name`` rules; most kinds take a DNS subdomain."""
        return dns_subdomain_causes(name)

    def convert(self, obj: Obj, to_version: str, api_version: str) -> Obj:
        """Return ``obj`` in ``to_version``; ``api_version`` is the full group/version string."""
        out = dict(obj)
        out["apiVersion"] = api_version
        return out

    def restore_storage_only(self, new: Obj, old: Obj) -> None:
        """After a write in an older served version: bring back, from the stored ``old``, values that
        version cannot express (beyond ``storage_only_paths``), as upstream's conversion annotations do."""

    def default(self, obj: Obj) -> None:
        """Fill schema defaults in place (storage version)."""

    def validate_schema(self, obj: Obj) -> list[Cause]:
        """Structural checks, reported as 422 Invalid."""
        return []

    def validate_schema_update(self, new: Obj, old: Obj) -> list[Cause]:
        """Structural checks of an update; a kind may skip the parts ``old`` shares (they passed).

        Kubernetes ratchets CRD validation on update the same way: what did not change is not
        judged again.
        """
        return self.validate_schema(new)

    def mutate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Mutating admission on create."""

    def validate_create(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Validating admission on create; raise an ApiError to deny."""

    def mutate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        """Mutating admission on update (``new`` in place)."""

    def validate_update(self, new: Obj, old: Obj, ctx: AdmissionContext) -> None:
        """Validating admission on update; raise an ApiError to deny."""

    def validate_delete(self, obj: Obj, ctx: AdmissionContext) -> None:
        """Admission on delete (the request, before finalizers are considered); raise to deny."""

    def spec_changed(self, new: Obj, old: Obj) -> bool:
        """Whether ``metadata.generation`` should go up."""
        return any(new.get(k) != old.get(k) for k in set(new) | set(old) if k not in ("metadata", "status"))


class VirtualSource(Protocol):
    """Where the objects of a *virtual* kind come from: computed from other data on each read (the
    bank's accounts, from the ledger), never stored as objects.

    Such a kind is cluster-scoped and read-only: the endpoints answer its list and get from the
    source (as JSON or as a Table, with label and field selectors), refuse every write with 405 and
    ``read_only_message``, and refuse watches with 405, since no store revision tracks its changes.
    Authorisation is the kind's ``access`` policy as for any kind; the scope it yields for a ``user``
    (None for roles that read everything) is handed over, and the source answers only what that
    scope may read, since it alone knows what its objects stand for.
    """

    #: Why writes are refused and what to use instead (the 405's message).
    read_only_message: str

    async def list_objects(self, scope: Scope | None) -> list[Obj]:
        """Every object the scope may read, in the kind's served version."""
        ...

    async def get_object(self, name: str, scope: Scope | None) -> Obj:
        """One object; raise an ApiError (404, or 403 outside the scope) when it cannot be read."""
        ...


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
    #: Who may do what (see ``resources.access``).
    access: AccessPolicy = field(default_factory=AccessPolicy)
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
    #: Set for a virtual kind (see ``VirtualSource``); its ``verbs`` are then ``get`` and ``list``.
    source: VirtualSource | None = None

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
