"""Pieces shared by the DWS kinds: schema fragments, section validation, access policies.

The schema fragments follow upstream's CRDs (``config/crd/bases``) field for field. Fields are
declared in alphabetical order, as controller-gen writes the CRDs' ``properties`` and ``required``
lists, so several missing fields are reported in the API server's order.

Slurmlink adds two file-system types to upstream's enums wherever a file-system type is named
(``DirectiveBreakdown`` allocation-set labels, ``PersistentStorageInstance.spec.fsType``,
``ClientMount`` mount types): ``gluster`` (one file system over several storage nodes, where NNF
sites use ``lustre``) and ``dir`` (a directory with capacity kept by accounting).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from slurmlink.resources import errors
from slurmlink.resources.access import READ, AccessPolicy, UnixAccount, base_roles
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Obj
from slurmlink.resources.schema import json_type, validate_part

#: Go's ``uint32`` (user and group ids): the CRD says ``integer``, decoding refuses the rest.
Uint32 = Annotated[int, Field(ge=0, le=4294967295)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
#: File-system types slurmlink serves beyond upstream's (see the module docstring).
SLURMLINK_FS_TYPES = ("gluster", "dir")

ResourceStatus = Literal[
    "Starting",
    "Ready",
    "Disabled",
    "NotPresent",
    "Offline",
    "Failed",
    "Degraded",
    "Drained",
    "Fenced",
    "Unknown",
]


class Open(BaseModel):
    """A schema object; unknown fields are pruned before validation, so validation allows them."""

    model_config = ConfigDict(extra="allow")


class ObjectReference(Open):
    """``corev1.ObjectReference`` (an atomic map in the CRDs)."""

    apiVersion: StrictStr | None = None
    fieldPath: StrictStr | None = None
    kind: StrictStr | None = None
    name: StrictStr | None = None
    namespace: StrictStr | None = None
    resourceVersion: StrictStr | None = None
    uid: StrictStr | None = None


class ResourceError(Open):
    """Upstream's ``ResourceError``: what a driver reports in a status' ``error``."""

    debugMessage: StrictStr
    severity: Literal["Minor", "Major", "Fatal"]
    type: Literal["Internal", "User", "WLM"]
    userMessage: StrictStr | None = None


def _not_object(field: str, value: Any) -> Cause:
    label = json.dumps(json_type(value))
    return Cause(
        field,
        f"Invalid value: {label}: {field} in body must be of type object: {label}",
        "FieldValueTypeInvalid",
    )


def section_causes(
    obj: Obj, sections: dict[str, type[BaseModel]], *, required: tuple[str, ...] = ()
) -> list[Cause]:
    """Validate the object's top-level sections (``spec``, ``status``) against their models."""
    causes: list[Cause] = []
    for field, model in sections.items():
        value = obj.get(field)
        if value is None:
            if field in required:
                causes.append(Cause(field, "Required value", "FieldValueRequired"))
            continue
        if not isinstance(value, dict):
            causes.append(_not_object(field, value))
            continue
        causes.extend(validate_part(model, value, field))
    return causes


def set_default(obj: Obj, section: str, key: str, value: Any) -> None:
    """A schema default: applied when the enclosing object exists and the field does not."""
    part = obj.get(section)
    if isinstance(part, dict) and part.get(key) is None:
        part[key] = value


# ---- access -----------------------------------------------------------------------------------------

#: What the workload manager (slurmlink's gateway, acting as DWS driver and WLM) does with the
#: objects of a Workflow: everything but deletecollection, as with Workflows.
WLM_WRITES = frozenset({"create", "delete", "patch", "update"})
#: What a node agent writes on the objects of its node (``/status`` included).
NODE_WRITES = frozenset({"create", "patch", "update"})


def user_id_is(obj: Obj, account: UnixAccount) -> bool:
    """Objects of a user's job that name the user: ``spec.userID`` (as on the Workflow)."""
    spec = obj.get("spec")
    return isinstance(spec, dict) and spec.get("userID") == account.uid


def spec_node_is(obj: Obj, node: str) -> bool:
    """Objects of one node: ``spec.node`` (what its agent may write)."""
    spec = obj.get("spec")
    return isinstance(spec, dict) and spec.get("node") == node


def check_immutable(group: str, kind: str, new: Obj, old: Obj, fields: Iterable[str]) -> None:
    """Refuse an update that changes any of the spec ``fields`` (422, one cause per field)."""
    before, after = old.get("spec") or {}, new.get("spec") or {}
    changed = [k for k in fields if before.get(k) != after.get(k)]
    if changed:
        name = (new.get("metadata") or {}).get("name", "")
        causes = [Cause(f"spec.{k}", "field is immutable", "FieldValueInvalid") for k in changed]
        raise errors.invalid(group, kind, name, causes)


def job_object_access(
    user_reads: Callable[[Obj, UnixAccount], bool] | None = None,
    *,
    node_writes: Callable[[Obj, str], bool] | None = None,
) -> AccessPolicy:
    """The policy of an object that belongs to a job's Workflow.

    admin everything; workload-manager read and write; viewer read; a ``user`` reads the objects of
    their own jobs: those stamped with their uid (the owner label, ``access.OWNER_UID_LABEL``, which
    ``dws.ownership.adopt`` copies from the Workflow's ``spec.userID``) and those ``user_reads``
    accepts; never writes. ``node_writes`` lets a node agent write its node's objects.
    """
    roles = base_roles(workload_manager=WLM_WRITES)
    if node_writes is not None:
        roles = base_roles(workload_manager=WLM_WRITES, node_agent=READ)
    return AccessPolicy(
        roles=roles,
        user_verbs=READ,
        user_reads=user_reads,
        node_verbs=NODE_WRITES if node_writes else frozenset(),
        node_writes=node_writes,
    )
