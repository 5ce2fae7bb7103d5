"""What a ``StoragePool`` holds: its member ``Storage`` objects and their capacity, in granules.

Pure functions of the pool, the Storage objects (namespace ``default``) and the bytes already
allocated on each node, so every part that needs these numbers — the StoragePool controller (the
pool's ``status``), placement and the gateway's ``slurm_bb_pools`` — computes the same ones.

Membership: a Storage is in a pool when ``spec.nodes`` names it or its labels match
``spec.nodeSelector`` (``metav1.LabelSelector``: ``matchLabels`` and ``matchExpressions``, all must
hold). A node named in ``spec.nodes`` that has no Storage object counts with status ``NotPresent``
and no capacity.

Capacity: a node holds ``status.capacity // granularity`` granules (a partial granule cannot be
handed out). It is *usable* when an admin has not drained it (``spec.state: Enabled``) and its agent
reports it ``Ready`` (the heartbeat controller marks it ``Offline`` when the agent stops). Its free
granules are ``(capacity - allocated) // granularity`` when usable, 0 otherwise. Allocations are per
node in bytes, not per pool, because pools of different file-system types may share a node: what
one pool hands out is gone for the others. The pool's total counts every member; its free only the
usable ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slurmlink.resources.dws.storage import STORAGE_NAMESPACE
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import now_rfc3339
from slurmlink.resources.storage.storagepool import granularity_bytes

#: The value of upstream's driver label (``dataworkflowservices.github.io/storage``) on the Storage
#: objects slurmlink's node agents register; a pool may select them by it.
AGENT_STORAGE_TYPE = "slurmlink"
#: The pool condition that says whether anything can be placed in it.
READY_CONDITION = "Ready"

#: Bytes allocated on a node (by every pool), given its name.
Allocated = Callable[[str], int]


def no_allocations(_node: str) -> int:
    """Allocations do not exist yet: nothing is allocated anywhere."""
    return 0


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a ``metav1.LabelSelector``; an absent selector matches nothing and
    an empty one everything (Kubernetes' ``LabelSelectorAsSelector``)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator = requirement.get("key"), requirement.get("operator")
        values = requirement.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def is_member(pool: Obj, storage: Obj) -> bool:
    """``storage`` (a Storage object) belongs to ``pool``."""
    m = storage.get("metadata") or {}
    if m.get("namespace") not in (None, STORAGE_NAMESPACE):
        return False
    spec = pool.get("spec") or {}
    if _name(storage) in (spec.get("nodes") or []):
        return True
    return selector_matches(spec.get("nodeSelector"), m.get("labels") or {})


def node_status(storage: Obj | None) -> str:
    """The DWS ResourceStatus a pool shows for a node: the Storage's ``status.status``; ``Disabled``
    for a drained node whose agent has not said so yet; ``NotPresent`` without a Storage object."""
    if storage is None:
        return "NotPresent"
    status = str((storage.get("status") or {}).get("status") or "Unknown")
    if (storage.get("spec") or {}).get("state") == "Disabled" and status == "Ready":
        return "Disabled"
    return status


def node_usable(storage: Obj | None) -> bool:
    """Enabled by the admin and Ready by its agent: new allocations may go there."""
    if storage is None:
        return False
    enabled = (storage.get("spec") or {}).get("state", "Enabled") == "Enabled"
    return enabled and (storage.get("status") or {}).get("status") == "Ready"


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    status: str
    usable: bool
    total_granules: int
    free_granules: int
    granularity: int
    #: Why the node takes nothing new (its Storage's status message), empty when usable.
    reason: str = ""

    @property
    def total_bytes(self) -> int:
        return self.total_granules * self.granularity

    @property
    def free_bytes(self) -> int:
        return self.free_granules * self.granularity

    def to_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "totalGranules": self.total_granules,
            "freeGranules": self.free_granules,
            "totalBytes": self.total_bytes,
            "freeBytes": self.free_bytes,
        }


@dataclass(frozen=True)
class PoolCapacity:
    granularity: int
    nodes: tuple[NodeCapacity, ...]

    @property
    def total_granules(self) -> int:
        return sum(n.total_granules for n in self.nodes)

    @property
    def free_granules(self) -> int:
        return sum(n.free_granules for n in self.nodes)

    @property
    def usable_nodes(self) -> list[NodeCapacity]:
        return [n for n in self.nodes if n.usable]


def node_capacity(name: str, storage: Obj | None, granularity: int, allocated: Allocated) -> NodeCapacity:
    status = (storage or {}).get("status") or {}
    raw = status.get("capacity")
    capacity_bytes = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0
    usable = node_usable(storage)
    free = max(0, capacity_bytes - allocated(name)) // granularity if usable else 0
    reason = ""
    if not usable:
        reason = str(status.get("message") or "") or ("no Storage object" if storage is None else "")
    return NodeCapacity(
        name=name,
        status=node_status(storage),
        usable=usable,
        total_granules=capacity_bytes // granularity,
        free_granules=free,
        granularity=granularity,
        reason=reason,
    )


def pool_capacity(
    pool: Obj, storages: Iterable[Obj], allocated: Allocated = no_allocations
) -> PoolCapacity | None:
    """The pool's nodes and their capacity; None when its granularity does not parse (the API
    refuses such pools, so only a hand-written store could hold one)."""
    granularity = granularity_bytes(pool)
    if granularity is None or granularity < 1:
        return None
    by_name: dict[str, Obj | None] = {_name(s): s for s in storages if is_member(pool, s)}
    for name in (pool.get("spec") or {}).get("nodes") or []:
        by_name.setdefault(str(name), None)
    nodes = tuple(node_capacity(name, by_name[name], granularity, allocated) for name in sorted(by_name))
    return PoolCapacity(granularity, nodes)


def _ready_condition(capacity: PoolCapacity) -> tuple[str, str, str]:
    """(status, reason, message) of the pool's Ready condition."""
    usable = [n for n in capacity.usable_nodes if n.total_granules > 0]
    total = len(capacity.nodes)
    others = [n for n in capacity.nodes if not n.usable]
    detail = "; ".join(f"{n.name} {n.status}" + (f": {n.reason}" if n.reason else "") for n in others)
    message = f"{len(usable)} of {total} storage node{'s' if total != 1 else ''} usable"
    if detail:
        message += f" ({detail})"
    if usable:
        return "True", "StorageAvailable", message
    return "False", "NoStorageAvailable", message


def pool_status(
    pool: Obj,
    storages: Iterable[Obj],
    allocated: Allocated = no_allocations,
    *,
    now: Callable[[], str] = now_rfc3339,
) -> dict[str, Any] | None:
    """The ``status`` the pool should have (None if its granularity does not parse).

    The Ready condition's ``lastTransitionTime`` is kept from the pool's current status while the
    condition's status stays the same, as ``meta.SetStatusCondition`` does.
    """
    capacity = pool_capacity(pool, storages, allocated)
    if capacity is None:
        return None
    cond_status, reason, message = _ready_condition(capacity)
    previous = next(
        (
            c
            for c in (pool.get("status") or {}).get("conditions") or []
            if isinstance(c, dict) and c.get("type") == READY_CONDITION
        ),
        None,
    )
    since = (
        previous["lastTransitionTime"]
        if previous is not None
        and previous.get("status") == cond_status
        and previous.get("lastTransitionTime")
        else now()
    )
    status: dict[str, Any] = {
        "granularity": capacity.granularity,
        "totalGranules": capacity.total_granules,
        "freeGranules": capacity.free_granules,
        "totalBytes": capacity.total_granules * capacity.granularity,
        "freeBytes": capacity.free_granules * capacity.granularity,
        "nodes": [n.to_status() for n in capacity.nodes],
        "conditions": [
            {
                "type": READY_CONDITION,
                "status": cond_status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            }
        ],
    }
    generation = (pool.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        status["observedGeneration"] = generation
        status["conditions"][0]["observedGeneration"] = generation
    return status
