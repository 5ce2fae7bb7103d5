"""Fill a ``Servers`` and take its capacity, in one store transaction (the API server's side).

The workload manager (the Slurm gateway) asks for it once the driver has broken a directive down
(``DirectiveBreakdown.status.storage``) and the job's node count is known. In one transaction this
takes the object-write lock, reads the pools, the storage nodes and every ``StorageAllocation``,
chooses nodes (:func:`placement.place`), creates one StorageAllocation per allocation and writes
``Servers.spec.allocationSets``. Two placements therefore never see the same free granules, on SQLite
or on PostgreSQL with several API replicas. A Servers already filled is returned as it is, so the
call is idempotent.
"""

from __future__ import annotations

from typing import Any

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.identity import Identity
from slurmlink.burstbuffer.names import INSTANCE_ANNOTATION, POOL_ANNOTATION
from slurmlink.burstbuffer.placement import PlacementError, place
from slurmlink.resources import errors
from slurmlink.resources.access import OWNER_UID_LABEL
from slurmlink.resources.dws import ownership
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.storage.capacity import pool_capacity
from slurmlink.resources.storage.storageallocation import (
    STORAGE_ALLOCATION,
    STORAGE_NODE_FINALIZER,
    allocated_bytes,
)
from slurmlink.resources.storage.storagepool import STORAGE_POOL
from slurmlink.store.transaction import Transaction

#: Most bricks a shared file system is spread over.
MAX_SHARED_SERVERS = 8


def _owner(obj: Obj, kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def _pools_for(pools: list[Obj], fs_type: str, named: str | None) -> list[Obj]:
    serving = [p for p in pools if fs_type in ((p.get("spec") or {}).get("fileSystemTypes") or [])]
    if named:
        return [p for p in serving if p["metadata"]["name"] == named]
    return sorted(serving, key=lambda p: p["metadata"]["name"])


def place_servers(
    service: ResourceService, namespace: str, name: str, computes: int, identity: Identity
) -> Obj:
    """Fill Servers ``namespace/name`` for a job on ``computes`` nodes; the Servers (storage version).

    Raises a 409 ApiError saying what the pool has when the capacity is not free now, 404 when the
    Servers or its breakdown is missing, 422 when the breakdown is not ready.
    """

    def transaction(tx: Transaction) -> Obj:
        tx.lock_writes()
        servers = _get(tx, SERVERS, namespace, name)
        if (servers.get("spec") or {}).get("allocationSets"):
            return servers
        breakdown_name = _owner(servers, "DirectiveBreakdown") or name
        breakdown = _get(tx, DIRECTIVE_BREAKDOWN, namespace, breakdown_name)
        storage = (breakdown.get("status") or {}).get("storage") or {}
        sets = storage.get("allocationSets") or []
        if not (breakdown.get("status") or {}).get("ready") or not sets:
            raise errors.ApiError(
                422, "Invalid", f"DirectiveBreakdown {namespace}/{breakdown_name} is not ready to place"
            )
        workflow = _get(tx, WORKFLOW, namespace, _owner(breakdown, "Workflow") or "")
        annotations = (breakdown.get("metadata") or {}).get("annotations") or {}
        owner = servers
        lifetime = str(storage.get("lifetime") or "job")
        if lifetime == "persistent":
            owner = _get(tx, PERSISTENT_STORAGE_INSTANCE, namespace, annotations.get(INSTANCE_ANNOTATION, ""))
        pools = tx.list(STORAGE_POOL.key)
        storages = tx.list(STORAGE.key, STORAGE_NAMESPACE)
        allocations = tx.list(STORAGE_ALLOCATION.key)
        filled: list[dict[str, Any]] = []
        for aset in sets:
            fs_type = str(aset.get("label"))
            chosen, pool_name = _choose(
                aset, fs_type, annotations.get(POOL_ANNOTATION), pools, storages, allocations, computes
            )
            counts: dict[str, int] = {}
            for index, placed in enumerate(chosen):
                counts[placed.node] = counts.get(placed.node, 0) + 1
                alloc_name = f"{name}-{len(filled)}-{index}" if len(sets) > 1 else f"{name}-{index}"
                body = _allocation(
                    alloc_name,
                    namespace,
                    placed.node,
                    placed.capacity,
                    index,
                    fs_type,
                    pool_name,
                    lifetime,
                    workflow,
                    owner,
                    breakdown,
                    [p.node for p in chosen]
                    if aset.get("allocationStrategy") == "AllocateAcrossServers"
                    else None,
                )
                ns, obj_name, obj = service.prepare_create(
                    STORAGE_ALLOCATION, STORAGE_ALLOCATION.storage_version, namespace, body, identity
                )
                created = tx.create(STORAGE_ALLOCATION.key, ns, obj_name, obj)
                allocations.append(created)
            filled.append(
                {
                    "label": fs_type,
                    "allocationSize": chosen[0].capacity,
                    "storage": [{"name": n, "allocationCount": c} for n, c in sorted(counts.items())],
                }
            )
        updated = {**servers, "spec": {**(servers.get("spec") or {}), "allocationSets": filled}}
        m = dict(updated["metadata"])
        m["generation"] = int(m.get("generation") or 1) + 1
        updated["metadata"] = m
        return tx.update(SERVERS.key, namespace, name, updated, int(m["resourceVersion"]))

    try:
        return service.store.run_transaction(transaction)
    except PlacementError as exc:
        raise errors.ApiError(409, "Conflict", str(exc)) from exc


def _choose(
    aset: Obj,
    fs_type: str,
    pool_name: str | None,
    pools: list[Obj],
    storages: list[Obj],
    allocations: list[Obj],
    computes: int,
) -> tuple[list[Any], str]:
    candidates = _pools_for(pools, fs_type, pool_name)
    if not candidates:
        where = f"pool {pool_name}" if pool_name else "no pool"
        raise PlacementError(f"{where} serves file-system type {fs_type}")
    last: PlacementError | None = None
    for pool in candidates:
        capacity = pool_capacity(pool, storages, lambda node: allocated_bytes(allocations, node))
        if capacity is None:
            continue
        try:
            return (
                place(
                    pool["metadata"]["name"],
                    capacity,
                    str(aset.get("allocationStrategy")),
                    int(aset.get("minimumCapacity") or 1),
                    computes=computes,
                    max_servers=MAX_SHARED_SERVERS,
                ),
                pool["metadata"]["name"],
            )
        except PlacementError as exc:
            last = exc
    raise last or PlacementError(f"no usable pool serves file-system type {fs_type}")


def _allocation(
    name: str,
    namespace: str,
    node: str,
    capacity: int,
    index: int,
    fs_type: str,
    pool: str,
    lifetime: str,
    workflow: Obj,
    owner: Obj,
    breakdown: Obj,
    servers: list[str] | None,
) -> Obj:
    spec = workflow.get("spec") or {}
    body: Obj = {
        "apiVersion": STORAGE_ALLOCATION.api_version(STORAGE_ALLOCATION.storage_version),
        "kind": STORAGE_ALLOCATION.kind,
        "metadata": {"name": name, "namespace": namespace, "finalizers": [STORAGE_NODE_FINALIZER]},
        "spec": {
            "node": node,
            "capacity": capacity,
            "index": index,
            "fsType": fs_type,
            "pool": pool,
            "lifetime": lifetime,
            "fileSystem": f"{namespace}-{name}"
            if servers is None
            else f"{namespace}-{name.rsplit('-', 1)[0]}",
            "userID": int(spec.get("userID") or 0),
            "groupID": int(spec.get("groupID") or 0),
            "source": {
                "kind": "DirectiveBreakdown",
                "name": breakdown["metadata"]["name"],
                "namespace": namespace,
            },
        },
    }
    if servers is not None:
        body["spec"]["servers"] = servers
    owner_obj = {**owner, "kind": owner.get("kind") or ""}
    if lifetime == "persistent":  # outlives the job: owned by the instance, still the user's to read
        body["metadata"]["labels"] = {OWNER_UID_LABEL: str(body["spec"]["userID"])}
        ownership.own(body, owner_obj)
    else:
        ownership.adopt(body, workflow, owner=owner_obj)
    return body


def _get(tx: Transaction, kind: Kind, namespace: str, name: str) -> Obj:
    obj = tx.get(kind.key, namespace, name) if name else None
    if obj is None:
        raise errors.not_found(kind.group, kind.plural, name or "(unnamed)")
    return obj
