"""A StoragePool's members and capacity (``resources/storage/capacity.py``); who may renew a node Lease."""

from __future__ import annotations

from typing import Any

import pytest

from slurmlink.resources.access import NodeScope, Reach, decide
from slurmlink.resources.coordination import LEASE, NODE_LEASE_NAMESPACE
from slurmlink.resources.storage.capacity import is_member, pool_status, selector_matches

GiB = 1024**3
LABEL = "dataworkflowservices.github.io/storage"


def storage(name: str, capacity: int, status: str = "Ready", state: str = "Enabled", **labels: str) -> Any:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"state": state, "mode": "Live"},
        "status": {"capacity": capacity, "status": status},
    }


def pool(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "generation": 3}, "spec": {"fileSystemTypes": ["dir"], **spec}}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        (None, {"a": "1"}, False),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ],
)
def test_label_selectors(selector: Any, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_members_by_name_or_selector_in_namespace_default() -> None:
    p = pool(nodes=["s1"], nodeSelector={"matchLabels": {LABEL: "slurmlink"}})
    assert is_member(p, storage("s1", GiB))
    assert is_member(p, storage("s9", GiB, **{LABEL: "slurmlink"}))
    assert not is_member(p, storage("s2", GiB))
    elsewhere = storage("s1", GiB)
    elsewhere["metadata"]["namespace"] = "other"
    assert not is_member(p, elsewhere)


def test_free_counts_only_enabled_ready_nodes_and_whole_granules() -> None:
    storages = [
        storage("s1", 3 * GiB + GiB // 2),  # 3 whole granules
        storage("s2", 2 * GiB, status="Offline"),
        storage("s3", 2 * GiB, state="Disabled", status="Disabled"),
        storage("s4", 2 * GiB, state="Disabled", status="Ready"),  # drained, agent not caught up yet
        storage("other", 9 * GiB),
    ]
    status = pool_status(pool(nodes=["s1", "s2", "s3", "s4", "gone"]), storages, now=lambda: "T0")
    assert status is not None
    assert (status["totalGranules"], status["freeGranules"]) == (9, 3)
    assert (status["totalBytes"], status["freeBytes"]) == (9 * GiB, 3 * GiB)
    assert status["granularity"] == GiB and status["observedGeneration"] == 3
    by_name = {n["name"]: n for n in status["nodes"]}
    assert list(by_name) == ["gone", "s1", "s2", "s3", "s4"]
    assert {n: e["status"] for n, e in by_name.items()} == {
        "gone": "NotPresent",
        "s1": "Ready",
        "s2": "Offline",
        "s3": "Disabled",
        "s4": "Disabled",
    }
    assert by_name["s1"] == {
        "name": "s1",
        "status": "Ready",
        "totalGranules": 3,
        "freeGranules": 3,
        "totalBytes": 3 * GiB,
        "freeBytes": 3 * GiB,
    }
    [ready] = status["conditions"]
    assert ready["status"] == "True" and ready["reason"] == "StorageAvailable"
    assert ready["message"].startswith("1 of 5 storage nodes usable (gone NotPresent: no Storage object;")


def test_allocations_are_subtracted_per_node() -> None:
    allocated = {"s1": GiB + 1, "s2": 5 * GiB}
    status = pool_status(
        pool(nodes=["s1", "s2"], granularity="512MiB"),
        [storage("s1", 4 * GiB), storage("s2", 4 * GiB)],
        allocated=lambda node: allocated.get(node, 0),
    )
    assert status is not None
    assert {n["name"]: n["freeGranules"] for n in status["nodes"]} == {"s1": 5, "s2": 0}
    assert status["totalGranules"] == 16 and status["freeGranules"] == 5


def test_the_ready_condition_keeps_its_transition_time_while_unchanged() -> None:
    p = pool(nodes=["s1"])
    first = pool_status(p, [storage("s1", GiB)], now=lambda: "T0")
    assert first is not None
    p["status"] = first
    same = pool_status(p, [storage("s1", 2 * GiB)], now=lambda: "T1")
    assert same is not None and same["conditions"][0]["lastTransitionTime"] == "T0"
    p["status"] = same
    down = pool_status(p, [storage("s1", 2 * GiB, status="Offline")], now=lambda: "T2")
    assert down is not None
    assert down["conditions"][0]["status"] == "False"
    assert down["conditions"][0]["reason"] == "NoStorageAvailable"
    assert down["conditions"][0]["lastTransitionTime"] == "T2"


@pytest.mark.parametrize(
    ("verb", "reach"),
    [
        ("get", Reach.NODE),
        ("create", Reach.NODE),
        ("update", Reach.NODE),
        ("patch", Reach.NODE),
        ("list", None),
        ("watch", None),
        ("delete", None),
    ],
)
def test_a_node_agent_may_renew_only_its_lease(verb: str, reach: Reach | None) -> None:
    assert decide(LEASE.access, ["node-agent"], verb) is reach


def test_the_node_lease_scope() -> None:
    scope = NodeScope("n1", "system:node:n1", LEASE.access)
    lease = {"metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE}}
    assert scope.may_create(lease) and scope.may_read(lease) and scope.may_write(lease)
    assert not scope.may_write({"metadata": {"name": "n2", "namespace": NODE_LEASE_NAMESPACE}})
    assert not scope.may_write({"metadata": {"name": "n1", "namespace": "dws-system"}})
