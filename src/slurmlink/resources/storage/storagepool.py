"""``slurmlink.io/v1`` ``StoragePool``: capacity of one kind of burst buffer, counted in granules.

A pool serves one or more file-system types (the ``type=`` of ``#DW jobdw``) from a set of storage
nodes: the DWS ``Storage`` objects (namespace ``default``) named in ``spec.nodes`` and those whose
labels match ``spec.nodeSelector``. Capacity is handed out in whole granules
(``spec.granularity``: bytes, or a size such as ``1GiB``), with the allocation strategies the pool
allows. ``status`` (written through ``/status`` only) says what the pool has and has free, in total
and per node, so ``kubectl get storagepools`` reads like ``scontrol show burst``::

    NAME      TYPE      GRANULARITY   TOTAL    FREE     NODES   AGE
    xfs       xfs       1GiB          300GiB   296GiB   3       5m

Cluster-scoped: a pool is site configuration, like Slurm's burst buffer pools. Every role may read
pools (any Slurm user sees them with ``scontrol show burst``); only the admin changes them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from slurmlink.resources.access import AccessPolicy, UnixAccount, base_roles
from slurmlink.resources.dws.common import Int64, Open, ResourceStatus, section_causes
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, dns_label_causes
from slurmlink.resources.sizes import SizeError, format_size, parse_size
from slurmlink.resources.storage.group import GROUP, VERSION

FileSystemType = Literal["xfs", "gluster", "raw", "dir", "gfs2", "lustre"]
AllocationStrategy = Literal[
    "AllocatePerCompute", "AllocatePerServer", "AllocateAcrossServers", "AllocateSingleServer"
]
DEFAULT_GRANULARITY = "1GiB"
DEFAULT_STRATEGIES = ("AllocatePerCompute", "AllocateAcrossServers", "AllocateSingleServer")
NonNegative = Annotated[Int64, Field(ge=0)]


class LabelSelectorRequirement(Open):
    key: StrictStr
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[StrictStr] | None = None


class LabelSelector(Open):
    """``metav1.LabelSelector``, over the labels of ``Storage`` objects."""

    matchExpressions: list[LabelSelectorRequirement] | None = None
    matchLabels: dict[str, StrictStr] | None = None


class StoragePoolSpec(Open):
    allocationStrategies: list[AllocationStrategy] | None = None
    fileSystemTypes: Annotated[list[FileSystemType], Field(min_length=1)]
    granularity: StrictInt | StrictStr = DEFAULT_GRANULARITY
    nodeSelector: LabelSelector | None = None
    nodes: list[StrictStr] | None = None
    profile: StrictStr | None = None


class Condition(Open):
    """``metav1.Condition``."""

    lastTransitionTime: StrictStr
    message: StrictStr
    observedGeneration: StrictInt | None = None
    reason: StrictStr
    status: Literal["True", "False", "Unknown"]
    type: StrictStr


class StoragePoolNode(Open):
    freeBytes: NonNegative | None = None
    freeGranules: NonNegative
    name: StrictStr
    status: ResourceStatus | None = None
    totalBytes: NonNegative | None = None
    totalGranules: NonNegative


class StoragePoolStatus(Open):
    conditions: list[Condition] | None = None
    freeBytes: NonNegative | None = None
    freeGranules: NonNegative | None = None
    granularity: Annotated[Int64, Field(ge=1)] | None = None
    nodes: list[StoragePoolNode] | None = None
    observedGeneration: StrictInt | None = None
    totalBytes: NonNegative | None = None
    totalGranules: NonNegative | None = None


class StoragePoolObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: StoragePoolSpec | None = None
    status: StoragePoolStatus | None = None


def granularity_bytes(pool: Obj) -> int | None:
    """The pool's granule in bytes (None when the spec has none that parses)."""
    spec = pool.get("spec") or {}
    try:
        return parse_size(spec.get("granularity", DEFAULT_GRANULARITY))
    except SizeError:
        return None


def _duplicates(values: Any) -> list[Any]:
    if not isinstance(values, list):
        return []
    seen: list[Any] = []
    out: list[Any] = []
    for value in values:
        if value in seen and value not in out:
            out.append(value)
        seen.append(value)
    return out


class StoragePoolStrategy(Strategy):
    status_subresource = True
    structure = StoragePoolObject

    def validate_name(self, name: str) -> list[Cause]:
        return dns_label_causes(name)  # Slurm shows it as a pool name: no dots

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if isinstance(spec, dict):
            spec.setdefault("granularity", DEFAULT_GRANULARITY)
            if spec.get("allocationStrategies") is None:
                spec["allocationStrategies"] = list(DEFAULT_STRATEGIES)

    def validate_schema(self, obj: Obj) -> list[Cause]:
        causes = section_causes(
            obj, {"spec": StoragePoolSpec, "status": StoragePoolStatus}, required=("spec",)
        )
        if causes:
            return causes
        spec = obj["spec"]
        granularity = spec.get("granularity")
        try:
            if parse_size(granularity) < 1:
                text = f"Invalid value: {json.dumps(granularity)}: must be at least 1 byte"
                causes.append(Cause("spec.granularity", text))
        except SizeError as exc:
            causes.append(Cause("spec.granularity", f"Invalid value: {json.dumps(granularity)}: {exc}"))
        for field in ("fileSystemTypes", "allocationStrategies", "nodes"):
            for value in _duplicates(spec.get(field)):
                causes.append(
                    Cause(f"spec.{field}", f"Duplicate value: {json.dumps(value)}", "FieldValueDuplicate")
                )
        status = obj.get("status") or {}
        for prefix, part in [("status", status)] + [
            (f"status.nodes[{i}]", node) for i, node in enumerate(status.get("nodes") or [])
        ]:
            free, total = part.get("freeGranules"), part.get("totalGranules")
            if isinstance(free, int) and isinstance(total, int) and free > total:
                causes.append(
                    Cause(
                        f"{prefix}.freeGranules",
                        f"Invalid value: {free}: must not exceed {prefix}.totalGranules ({total})",
                    )
                )
        return causes


def _types(obj: Obj) -> str | None:
    types = (obj.get("spec") or {}).get("fileSystemTypes")
    return ",".join(str(t) for t in types) if isinstance(types, list) else None


def _granularity(obj: Obj) -> str | None:
    size = granularity_bytes(obj)
    return format_size(size) if size is not None else None


def _size_of(field: str) -> Any:
    def cell(obj: Obj) -> str | None:
        value = (obj.get("status") or {}).get(field)
        return format_size(value) if isinstance(value, int) and not isinstance(value, bool) else None

    return cell


def _node_count(obj: Obj) -> int:
    nodes = (obj.get("status") or {}).get("nodes")
    if isinstance(nodes, list):
        return len(nodes)
    return len((obj.get("spec") or {}).get("nodes") or [])


def _strategies(obj: Obj) -> str | None:
    values = (obj.get("spec") or {}).get("allocationStrategies")
    return ",".join(str(v) for v in values) if isinstance(values, list) else None


def _anyone(_obj: Obj, _account: UnixAccount) -> bool:
    return True


STORAGE_POOL = Kind(
    group=GROUP,
    kind="StoragePool",
    plural="storagepools",
    singular="storagepool",
    namespaced=False,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=StoragePoolStrategy(),
    short_names=("pool",),
    access=AccessPolicy(roles=base_roles(), user_reads=_anyone),
    printer_columns=(
        PrinterColumn("TYPE", ".spec.fileSystemTypes", "string", "File-system types served", value=_types),
        PrinterColumn("GRANULARITY", ".spec.granularity", "string", "Unit of allocation", value=_granularity),
        PrinterColumn("TOTAL", ".status.totalBytes", "string", "Capacity", value=_size_of("totalBytes")),
        PrinterColumn(
            "FREE", ".status.freeBytes", "string", "Capacity not allocated", value=_size_of("freeBytes")
        ),
        PrinterColumn("NODES", ".status.nodes", "integer", "Storage nodes in the pool", value=_node_count),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn(
            "STRATEGIES",
            ".spec.allocationStrategies",
            "string",
            "Allocation strategies",
            priority=1,
            value=_strategies,
        ),
        PrinterColumn("PROFILE", ".spec.profile", "string", "Storage profile", priority=1),
    ),
)
