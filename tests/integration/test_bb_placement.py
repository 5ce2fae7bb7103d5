"""Placement through the store: capacity is taken in the transaction that fills ``Servers``.

Runs on SQLite and PostgreSQL; many placements at once (threads, so PostgreSQL's transactions really
overlap) never hand out the same granules, drained nodes get nothing, and a filled Servers is
answered as it is.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth import roles
from slurmlink.burstbuffer.placing import place_servers
from slurmlink.resources import errors
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.storage import STORAGE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION, STORAGE_NODE_FINALIZER
from slurmlink.resources.storage.storagepool import STORAGE_POOL
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore

GIB = 1 << 30
NS = "slurm"


@pytest.fixture
def service(store: SqlStore) -> ResourceService:
    svc = ResourceService(store, default_registry(), WatchHub(store))
    for name in (NS, "default"):
        svc.create(NAMESPACE, "v1", None, {"metadata": {"name": name}}, roles.SYSTEM)
    return svc


def _put(store: SqlStore, kind: Any, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    obj = {
        "apiVersion": kind.api_version(kind.storage_version),
        "kind": kind.kind,
        "metadata": {
            "name": name,
            "uid": f"uid-{kind.kind}-{name}",
            **({"namespace": namespace} if namespace else {}),
        },
        **body,
    }
    return store.create(kind.key, namespace, name, obj)


def _storage(store: SqlStore, name: str, capacity: int, *, state: str = "Enabled") -> None:
    _put(
        store,
        STORAGE,
        "default",
        name,
        {"spec": {"state": state, "mode": "Live"}, "status": {"capacity": capacity, "status": "Ready"}},
    )


def _job(store: SqlStore, job: int, strategy: str = "AllocatePerCompute", size: int = GIB) -> str:
    wf = _put(
        store,
        WORKFLOW,
        NS,
        f"bb{job}",
        {
            "spec": {
                "desiredState": "Proposal",
                "userID": 1001,
                "groupID": 1001,
                "jobID": str(job),
                "wlmID": "slurm",
            }
        },
    )
    name = f"bb{job}-0"
    ref = {
        "apiVersion": wf["apiVersion"],
        "kind": "Workflow",
        "name": wf["metadata"]["name"],
        "uid": wf["metadata"]["uid"],
        "controller": True,
    }
    bd = _put(
        store,
        DIRECTIVE_BREAKDOWN,
        NS,
        name,
        {
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-bd-{name}", "ownerReferences": [ref]},
            "spec": {"directive": "#DW jobdw type=xfs capacity=1GiB name=s", "userID": 1001},
            "status": {
                "ready": True,
                "storage": {
                    "lifetime": "job",
                    "allocationSets": [
                        {"label": "xfs", "allocationStrategy": strategy, "minimumCapacity": size}
                    ],
                },
            },
        },
    )
    bref = {
        "apiVersion": bd["apiVersion"],
        "kind": "DirectiveBreakdown",
        "name": name,
        "uid": bd["metadata"]["uid"],
        "controller": True,
    }
    _put(
        store,
        SERVERS,
        NS,
        name,
        {
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-sv-{name}", "ownerReferences": [bref]},
            "spec": {},
        },
    )
    return name


def _allocations(store: SqlStore) -> list[dict[str, Any]]:
    return store.list(STORAGE_ALLOCATION.key)[0]


def test_per_compute_spreads_and_fills_servers(service: ResourceService, store: SqlStore) -> None:
    _put(
        store,
        STORAGE_POOL,
        "",
        "xfs",
        {"spec": {"fileSystemTypes": ["xfs"], "granularity": "1GiB", "nodes": ["s1", "s2", "s3"]}},
    )
    for node in ("s1", "s2", "s3"):
        _storage(store, node, 4 * GIB)
    name = _job(store, 1)
    servers = place_servers(service, NS, name, 2, roles.SYSTEM)
    (aset,) = servers["spec"]["allocationSets"]
    assert aset["label"] == "xfs" and aset["allocationSize"] == GIB
    assert sum(s["allocationCount"] for s in aset["storage"]) == 2
    allocs = _allocations(store)
    assert len({a["spec"]["node"] for a in allocs}) == 2  # spread over two nodes
    assert all(a["metadata"]["finalizers"] == [STORAGE_NODE_FINALIZER] for a in allocs)
    assert all(a["spec"]["userID"] == 1001 and a["spec"]["capacity"] == GIB for a in allocs)
    assert {a["metadata"]["ownerReferences"][0]["kind"] for a in allocs} == {"Servers"}
    # Idempotent: a second call answers the filled Servers and takes nothing more.
    again = place_servers(service, NS, name, 2, roles.SYSTEM)
    assert again["spec"] == servers["spec"] and len(_allocations(store)) == 2


def test_drained_nodes_get_nothing_and_full_pool_is_refused(
    service: ResourceService, store: SqlStore
) -> None:
    _put(
        store,
        STORAGE_POOL,
        "",
        "xfs",
        {"spec": {"fileSystemTypes": ["xfs"], "granularity": "1GiB", "nodes": ["s1", "s2"]}},
    )
    _storage(store, "s1", 2 * GIB)
    _storage(store, "s2", 8 * GIB, state="Disabled")
    place_servers(service, NS, _job(store, 1), 2, roles.SYSTEM)
    assert {a["spec"]["node"] for a in _allocations(store)} == {"s1"}
    with pytest.raises(errors.ApiError) as info:
        place_servers(service, NS, _job(store, 2), 1, roles.SYSTEM)
    assert info.value.code == 409
    assert "pool xfs cannot hold" in info.value.message and "s2" in info.value.message
    assert len(_allocations(store)) == 2  # the refused placement took nothing


def test_concurrent_placements_never_share_granules(service: ResourceService, store: SqlStore) -> None:
    _put(
        store,
        STORAGE_POOL,
        "",
        "xfs",
        {"spec": {"fileSystemTypes": ["xfs"], "granularity": "1GiB", "nodes": ["s1", "s2"]}},
    )
    _storage(store, "s1", 5 * GIB)
    _storage(store, "s2", 5 * GIB)
    names = [_job(store, job) for job in range(1, 17)]
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            place_servers(service, NS, name, 1, roles.SYSTEM)
            outcomes[name] = "placed"
        except errors.ApiError as exc:
            outcomes[name] = f"{exc.code}"

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes.values()).count("placed") == 10, outcomes
    assert set(outcomes.values()) == {"placed", "409"}
    per_node: dict[str, int] = {}
    for alloc in _allocations(store):
        per_node[alloc["spec"]["node"]] = per_node.get(alloc["spec"]["node"], 0) + alloc["spec"]["capacity"]
    assert per_node == {"s1": 5 * GIB, "s2": 5 * GIB}
