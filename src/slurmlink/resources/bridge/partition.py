"""``slurmlink.io/v1`` ``Partition``: one Slurm partition as the bridge publishes it, for people and
for SlurmJobs to choose from.

Cluster-scoped and written by the job bridge alone (it acts as admin); every authenticated role,
``user`` included, reads them, as any Slurm user may run ``sinfo``. ``spec`` is the partition's
configuration — what ``scontrol show partition`` says, with the admin's overrides and extra
features (the seed's red-box YAML) applied — and changes rarely; ``status`` is what changes minute
to minute (state, idle and allocated CPUs), written through ``/status``::

    NAME        STATE   NODES   CPUS/NODE   MEM/NODE    MAXTIME      AGE
    debug       UP      4       2           7812Mi      1:00:00      5m
    long        UP      4       2           UNLIMITED   UNLIMITED    5m

``null`` means unlimited (or not known) and is the only way to say it: a zero limit is refused,
because the seed turned ``MaxTime=UNLIMITED`` into ``0`` and ``MaxMemPerNode=UNLIMITED`` into
``nan``, and no job ever matched those partitions again.

The object's name is a DNS label made from the Slurm name (``GPU_Short`` → ``gpu-short``,
:func:`object_name`); the Slurm name itself is ``spec.slurmName``. Labels for selection
(``spec.partitionSelector`` of a SlurmJob) are kept by this kind from the spec, so they cannot
drift from it: ``slurmlink.io/partition``, ``slurmlink.io/cluster``, ``slurmlink.io/default``,
``feature.slurmlink.io/<feature>: "true"`` per node feature, ``feature.slurmlink.io/<name>[_<version>]:
"<quantity>"`` per extra feature, and ``gres.slurmlink.io/<name>: "true"`` per GRES. Other labels
are the admin's.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from slurmlink.resources.access import READ, AccessPolicy, UnixAccount, base_roles
from slurmlink.resources.bridge.common import GROUP, VERSION, Condition, quantity_causes
from slurmlink.resources.bridge.timelimit import format_minutes
from slurmlink.resources.dws.common import Int64, Open, section_causes
from slurmlink.resources.errors import Cause
from slurmlink.resources.kind import Kind, Obj, PrinterColumn, Strategy, dns_label_causes, field_of
from slurmlink.resources.quantity import format_memory

NonNegative = Annotated[Int64, Field(ge=0)]
State = Literal["UP", "DOWN", "DRAIN", "INACTIVE", "GONE"]

PARTITION_LABEL = "slurmlink.io/partition"
CLUSTER_LABEL = "slurmlink.io/cluster"
DEFAULT_LABEL = "slurmlink.io/default"
FEATURE_PREFIX = "feature.slurmlink.io/"
GRES_PREFIX = "gres.slurmlink.io/"
_OWNED_KEYS = frozenset({PARTITION_LABEL, CLUSTER_LABEL, DEFAULT_LABEL})
_OWNED_PREFIXES = (FEATURE_PREFIX, GRES_PREFIX)
#: A label value, and the name part of a label key.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
#: Limits where zero would be read as "unlimited" by someone, so zero is never written.
_POSITIVE_LIMITS = ("cpusPerNode", "maxTime", "defaultTime", "maxNodesPerJob")


class ExtraFeature(Open):
    """A feature the admin declares for the partition (software, hardware), as in the seed's config."""

    name: StrictStr
    quantity: NonNegative | None = None
    version: StrictStr | None = None


class PartitionSpec(Open):
    #: Accounts and QOS allowed to use the partition; null means all.
    allowedAccounts: list[StrictStr] | None = None
    allowedQOS: list[StrictStr] | None = None
    cluster: StrictStr
    cpusPerNode: StrictInt | None = None
    default: StrictBool = False
    #: Minutes; null means no default (the partition's maximum applies).
    defaultTime: StrictInt | None = None
    extraFeatures: list[ExtraFeature] | None = None
    features: list[StrictStr] | None = None
    gres: list[StrictStr] | None = None
    #: Minutes; null means unlimited.
    maxTime: StrictInt | None = None
    maxNodesPerJob: StrictInt | None = None
    #: A Kubernetes quantity; null means unlimited.
    memoryPerNode: StrictInt | StrictStr | None = None
    #: Slurm's host list (``compute[1-4]``).
    nodes: StrictStr | None = None
    slurmName: Annotated[StrictStr, Field(min_length=1)]
    totalNodes: NonNegative | None = None


class PartitionStatus(Open):
    allocatedCPUs: NonNegative | None = None
    conditions: list[Condition] | None = None
    idleCPUs: NonNegative | None = None
    observedGeneration: StrictInt | None = None
    #: When the bridge last read the partition from Slurm (RFC 3339).
    observedTime: StrictStr | None = None
    state: State | None = None
    totalCPUs: NonNegative | None = None


class PartitionObject(BaseModel):
    """The structural schema: what is not declared here is pruned."""

    spec: PartitionSpec | None = None
    status: PartitionStatus | None = None


def _slug(text: str) -> str:
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    return slug[:63].rstrip("-") or "partition"


def object_name(slurm_name: str) -> str:
    """The Partition's object name for a Slurm partition: a DNS label (``GPU_Short`` → ``gpu-short``).

    Two Slurm names may give one slug (``a_b`` and ``a-b``); the bridge adds a suffix to the second.
    """
    return _slug(slurm_name)


def node_name(cluster: str, partition: str) -> str:
    """The virtual Node's name, as the seed's virtual kubelets were named: ``slurm-<cluster>-<partition>``,
    lower case and a valid DNS label even for ``GPU_Short`` (which the seed could not register)."""
    return _slug(f"slurm-{cluster}-{partition}")


def feature_key(name: str, version: str | None) -> str:
    """The label key part for an extra feature: ``<name>`` or ``<name>_<version>``, as the seed wrote it."""
    return f"{name}_{version}" if version else name


def _label_ok(text: str) -> bool:
    return 0 < len(text) <= 63 and _LABEL_VALUE.match(text) is not None


def selection_labels(spec: dict[str, Any]) -> dict[str, str]:
    """The labels this kind keeps from ``spec`` (see the module docstring); names that cannot be label
    keys or values are left out."""
    labels: dict[str, str] = {}
    for key, value in ((PARTITION_LABEL, spec.get("slurmName")), (CLUSTER_LABEL, spec.get("cluster"))):
        if isinstance(value, str) and _label_ok(value):
            labels[key] = value
    if spec.get("default") is True:
        labels[DEFAULT_LABEL] = "true"
    for feature in spec.get("features") or []:
        if isinstance(feature, str) and _label_ok(feature):
            labels[FEATURE_PREFIX + feature] = "true"
    for extra in spec.get("extraFeatures") or []:
        if not isinstance(extra, dict) or not isinstance(extra.get("name"), str):
            continue
        key = feature_key(extra["name"], extra.get("version"))
        if _label_ok(key):
            quantity = extra.get("quantity")
            labels[FEATURE_PREFIX + key] = str(quantity) if isinstance(quantity, int) else "true"
    for gres in spec.get("gres") or []:
        name = gres.split(":", 1)[0] if isinstance(gres, str) else ""
        if _label_ok(name):
            labels[GRES_PREFIX + name] = "true"
    return labels


def _owned(key: str) -> bool:
    return key in _OWNED_KEYS or key.startswith(_OWNED_PREFIXES)


def _spec_causes(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for field in _POSITIVE_LIMITS:
        value = spec.get(field)
        if isinstance(value, int) and value < 1:
            causes.append(
                Cause(
                    f"spec.{field}",
                    f"Invalid value: {value}: must be at least 1; null, never 0, means unlimited or unknown",
                )
            )
    causes += quantity_causes("spec.memoryPerNode", spec.get("memoryPerNode"))
    for i, extra in enumerate(spec.get("extraFeatures") or []):
        if not isinstance(extra, dict):
            continue
        key = feature_key(str(extra.get("name")), extra.get("version"))
        if not _label_ok(key):
            causes.append(
                Cause(
                    f"spec.extraFeatures[{i}]",
                    f"Invalid value: {json.dumps(key)}: name and version become a label key "
                    "(<name>_<version>): at most 63 letters, digits, '-', '_' or '.', starting and "
                    "ending with a letter or digit",
                )
            )
    return causes


class PartitionStrategy(Strategy):
    status_subresource = True
    structure = PartitionObject
    field_labels = {
        "spec.slurmName": field_of("spec", "slurmName"),
        "spec.cluster": field_of("spec", "cluster"),
        "status.state": field_of("status", "state"),
    }

    def validate_name(self, name: str) -> list[Cause]:
        return dns_label_causes(name)  # it becomes part of a virtual Node's name

    def default(self, obj: Obj) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        spec.setdefault("default", False)
        m = obj.setdefault("metadata", {})
        kept = {k: v for k, v in (m.get("labels") or {}).items() if not _owned(k)}
        m["labels"] = {**kept, **selection_labels(spec)}

    def validate_schema(self, obj: Obj) -> list[Cause]:
        causes = section_causes(obj, {"spec": PartitionSpec, "status": PartitionStatus}, required=("spec",))
        return causes or _spec_causes(obj["spec"])

    def validate_schema_update(self, new: Obj, old: Obj) -> list[Cause]:
        if new.get("spec") == old.get("spec"):
            return section_causes(new, {"status": PartitionStatus})
        return self.validate_schema(new)


def _anyone(_obj: Obj, _account: UnixAccount) -> bool:
    return True


def _memory(obj: Obj) -> str:
    value = (obj.get("spec") or {}).get("memoryPerNode")
    return "UNLIMITED" if value is None else format_memory(value)


def _minutes(field: str, unset: str | None) -> Any:
    def cell(obj: Obj) -> str | None:
        value = (obj.get("spec") or {}).get(field)
        return format_minutes(value) if isinstance(value, int) else unset

    return cell


def _features(obj: Obj) -> str | None:
    spec = obj.get("spec") or {}
    names = [str(f) for f in spec.get("features") or []]
    names += [
        feature_key(str(e.get("name")), e.get("version"))
        for e in spec.get("extraFeatures") or []
        if isinstance(e, dict)
    ]
    return ",".join(names) or None


#: Who reads Partitions: everyone who can authenticate. Only the admin (the bridge) writes them.
PARTITION_ACCESS = AccessPolicy(roles=base_roles(node_agent=READ, accountant=READ), user_reads=_anyone)

PARTITION = Kind(
    group=GROUP,
    kind="Partition",
    plural="partitions",
    singular="partition",
    namespaced=False,
    versions=(VERSION,),
    storage_version=VERSION,
    strategy=PartitionStrategy(),
    short_names=("part",),
    access=PARTITION_ACCESS,
    printer_columns=(
        PrinterColumn(
            "STATE", ".status.state", "string", "UP, DOWN, DRAIN, INACTIVE (GONE: no longer in Slurm)"
        ),
        PrinterColumn("NODES", ".spec.totalNodes", "integer", "Nodes in the partition"),
        PrinterColumn("CPUS/NODE", ".spec.cpusPerNode", "integer", "CPUs per node"),
        PrinterColumn("MEM/NODE", ".spec.memoryPerNode", "string", "Memory per node", value=_memory),
        PrinterColumn(
            "MAXTIME", ".spec.maxTime", "string", "Longest time limit", value=_minutes("maxTime", "UNLIMITED")
        ),
        PrinterColumn("AGE", ".metadata.creationTimestamp", "date"),
        PrinterColumn("SLURM NAME", ".spec.slurmName", "string", "The partition's name in Slurm", priority=1),
        PrinterColumn(
            "DEFAULTTIME",
            ".spec.defaultTime",
            "string",
            "Default time limit",
            1,
            value=_minutes("defaultTime", None),
        ),
        PrinterColumn(
            "MAXNODES", ".spec.maxNodesPerJob", "integer", "Most nodes one job may use", priority=1
        ),
        PrinterColumn("IDLE CPUS", ".status.idleCPUs", "integer", "CPUs idle now", priority=1),
        PrinterColumn("FEATURES", ".spec.features", "string", "Node and extra features", 1, value=_features),
    ),
)
