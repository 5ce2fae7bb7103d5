"""The burst-buffer driver against a real server, the test playing the workload manager and the agents.

A Workflow with ``#DW jobdw`` and persistent-buffer directives goes through Proposal → Teardown: the
driver breaks the directives down, the placement route fills Servers and takes capacity, allocations
the "agents" report Ready complete Setup, Computes lead to one ClientMount per node in PreRun,
PostRun unmounts, Teardown deletes the mounts and allocations and waits for their finalizers; the
capacity is free again. Errors (a type the site lacks, a failed allocation) reach the Workflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from slurmlink.burstbuffer.names import COMPUTE_NODE_FINALIZER, placement_path
from slurmlink.cli.main import main
from slurmlink.resources.storage.storageallocation import STORAGE_NODE_FINALIZER
from support.server import ServerProcess
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

GIB = 1 << 30
DWS = "/apis/dataworkflowservices.github.io/v1alpha7"
SL = "/apis/slurmlink.io/v1"
NS = "slurm"
MERGE = {"Content-Type": "application/merge-patch+json"}
_jobs = itertools.count(100)


def ok(response: httpx.Response, code: int = 200) -> Any:
    assert response.status_code == code, response.text
    return response.json()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        ok(
            client.post(
                f"{SL}/storagepools",
                json={
                    "metadata": {"name": "xfs"},
                    "spec": {
                        "fileSystemTypes": ["xfs", "gluster"],
                        "granularity": "1GiB",
                        "nodes": ["s1", "s2", "s3"],
                    },
                },
            ),
            201,
        )
        for node in ("s1", "s2", "s3"):
            obj = ok(
                client.post(
                    f"{DWS}/namespaces/default/storages",
                    json={"metadata": {"name": node}, "spec": {"state": "Enabled", "mode": "Live"}},
                ),
                201,
            )
            obj["status"] = {"capacity": 4 * GIB, "status": "Ready"}
            ok(client.put(f"{DWS}/namespaces/default/storages/{node}/status", json=obj))
        wait_for(lambda: _pool(client).get("freeGranules") == 12, 30, message="pool status")
        yield client


def _pool(client: httpx.Client) -> dict[str, Any]:
    return ok(client.get(f"{SL}/storagepools/xfs")).get("status") or {}


def _workflow(client: httpx.Client, directives: list[str]) -> str:
    job = next(_jobs)
    body = {
        "metadata": {"name": f"bb{job}", "namespace": NS},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": directives,
            "wlmID": "slurm",
            "jobID": str(job),
            "userID": 1001,
            "groupID": 1001,
        },
    }
    ok(client.post(f"{DWS}/namespaces/{NS}/workflows", json=body), 201)
    return f"bb{job}"


def _get(client: httpx.Client, name: str) -> dict[str, Any]:
    return ok(client.get(f"{DWS}/namespaces/{NS}/workflows/{name}"))


def _completed(client: httpx.Client, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        wf = _get(client, name)
        status = wf.get("status") or {}
        assert status.get("status") != "Error", status
        return wf if status.get("state") == state and status.get("status") == "Completed" else None

    return wait_for(done, timeout, message=f"{name} {state} completed")


def _advance(client: httpx.Client, name: str, state: str) -> None:
    ok(
        client.patch(
            f"{DWS}/namespaces/{NS}/workflows/{name}", json={"spec": {"desiredState": state}}, headers=MERGE
        )
    )


def _items(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    return ok(client.get(path))["items"]


def _allocations(client: httpx.Client) -> list[dict[str, Any]]:
    return _items(client, f"{SL}/namespaces/{NS}/storageallocations")


def _set_status(client: httpx.Client, path: str, status: dict[str, Any]) -> None:
    obj = ok(client.get(path))
    obj["status"] = status
    ok(client.put(f"{path}/status", json=obj))


def _drop_finalizers(client: httpx.Client, path: str) -> None:
    ok(client.patch(path, json={"metadata": {"finalizers": None}}, headers=MERGE))


def test_job_buffer_from_proposal_to_teardown(api: httpx.Client) -> None:
    name = _workflow(api, ["#DW jobdw type=xfs capacity=1GiB name=scratch"])
    wf = _completed(api, name, "Proposal")
    env = wf["status"]["env"]
    assert env["DW_JOB_scratch"] == f"/mnt/slurmlink/{name}/job/scratch"
    assert env["DW_JOB_XFS"] == env["DW_JOB_scratch"]
    breakdown = ok(api.get(f"{DWS}/namespaces/{NS}/directivebreakdowns/{name}-0"))
    (aset,) = breakdown["status"]["storage"]["allocationSets"]
    assert aset["allocationStrategy"] == "AllocatePerCompute" and aset["minimumCapacity"] == GIB

    servers = ok(api.post(placement_path(NS, f"{name}-0"), json={"computes": 2}))
    assert sum(s["allocationCount"] for s in servers["spec"]["allocationSets"][0]["storage"]) == 2
    allocations = [a for a in _allocations(api) if a["metadata"]["name"].startswith(f"{name}-")]
    assert len(allocations) == 2 and all(
        a["metadata"]["finalizers"] == [STORAGE_NODE_FINALIZER] for a in allocations
    )
    wait_for(lambda: _pool(api).get("freeGranules") == 10, 30, message="capacity taken")

    _advance(api, name, "Setup")
    wait_for(
        lambda: "waiting for storage" in str(_get(api, name)["status"].get("message")), 30, message="waits"
    )
    for alloc in allocations:
        path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
        _set_status(api, path, {"state": "Ready", "fileSystem": {"type": "xfs"}})
    _completed(api, name, "Setup")
    scraped = api.get("/metrics").text
    samples = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line and not line.startswith("#"))
    assert float(samples['slurmlink_storage_pool_bytes{pool="xfs",state="total"}']) == 12 * GIB
    assert 'slurmlink_burst_buffer_allocation_seconds_count{type="xfs"}' in scraped
    for state in ("DataIn",):
        _advance(api, name, state)
        _completed(api, name, state)

    ok(
        api.patch(
            f"{DWS}/namespaces/{NS}/computes/{name}",
            json={"data": [{"name": "c1"}, {"name": "c2"}]},
            headers=MERGE,
        )
    )
    _advance(api, name, "PreRun")
    mounts = wait_for(
        lambda: (
            len(_items(api, f"{DWS}/namespaces/{NS}/clientmounts")) >= 2
            and [
                m
                for m in _items(api, f"{DWS}/namespaces/{NS}/clientmounts")
                if m["metadata"]["name"].startswith(name)
            ]
        ),
        30,
        message="client mounts",
    )
    assert sorted(m["spec"]["node"] for m in mounts) == ["c1", "c2"]
    refs = {m["spec"]["mounts"][0]["device"]["deviceReference"]["objectReference"]["name"] for m in mounts}
    assert refs == {a["metadata"]["name"] for a in allocations}  # each compute its own allocation
    assert all(m["metadata"]["finalizers"] == [COMPUTE_NODE_FINALIZER] for m in mounts)
    for mount in mounts:
        path = f"{DWS}/namespaces/{NS}/clientmounts/{mount['metadata']['name']}"
        _set_status(api, path, {"allReady": True, "mounts": [{"state": "mounted", "ready": True}]})
    _completed(api, name, "PreRun")

    _advance(api, name, "PostRun")
    for mount in mounts:
        path = f"{DWS}/namespaces/{NS}/clientmounts/{mount['metadata']['name']}"
        wait_for(
            lambda p=path: ok(api.get(p))["spec"]["desiredState"] == "unmounted", 30, message="unmount asked"
        )
        _set_status(api, path, {"allReady": True, "mounts": [{"state": "unmounted", "ready": True}]})
    _completed(api, name, "PostRun")
    _advance(api, name, "DataOut")
    _completed(api, name, "DataOut")

    _advance(api, name, "Teardown")
    for mount in mounts:
        path = f"{DWS}/namespaces/{NS}/clientmounts/{mount['metadata']['name']}"
        wait_for(
            lambda p=path: ok(api.get(p))["metadata"].get("deletionTimestamp"), 30, message="mount deleted"
        )
        _drop_finalizers(api, path)
    for alloc in allocations:
        path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
        wait_for(
            lambda p=path: ok(api.get(p))["metadata"].get("deletionTimestamp"), 30, message="alloc deleted"
        )
        assert _get(api, name)["status"]["status"] != "Completed"  # Teardown waits for the agents
        _drop_finalizers(api, path)
    _completed(api, name, "Teardown")
    wait_for(lambda: _pool(api).get("freeGranules") == 12, 30, message="capacity back")


def test_unconfigured_type_fails_proposal_with_the_configured_ones(api: httpx.Client) -> None:
    name = _workflow(api, ["#DW jobdw type=lustre capacity=1GiB name=big"])

    def failed() -> dict[str, Any] | None:
        status = _get(api, name).get("status") or {}
        return status if status.get("status") == "Error" else None

    status = wait_for(failed, 30, message="Proposal error")
    assert "lustre" in status["message"] and "xfs" in status["message"]


def test_failed_allocation_fails_setup_with_the_agents_message(api: httpx.Client) -> None:
    name = _workflow(api, ["#DW jobdw type=xfs capacity=1GiB name=scratch"])
    _completed(api, name, "Proposal")
    ok(api.post(placement_path(NS, f"{name}-0"), json={"computes": 1}))
    _advance(api, name, "Setup")
    (alloc,) = [a for a in _allocations(api) if a["metadata"]["name"].startswith(f"{name}-")]
    path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
    _set_status(api, path, {"state": "Failed", "message": "mkfs.xfs: no space left"})

    def failed() -> dict[str, Any] | None:
        status = _get(api, name).get("status") or {}
        return status if status.get("status") == "Error" else None

    status = wait_for(failed, 30, message="Setup error")
    assert "mkfs.xfs: no space left" in status["message"] and alloc["spec"]["node"] in status["message"]
    _advance(api, name, "Teardown")
    wait_for(lambda: ok(api.get(path))["metadata"].get("deletionTimestamp"), 30, message="alloc deleted")
    _drop_finalizers(api, path)
    _completed(api, name, "Teardown")


def _cli(server: ServerProcess, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--kubeconfig", str(server.kubeconfig)])


def test_persistent_buffer_created_used_and_destroyed(api: httpx.Client, server: ServerProcess) -> None:
    creator = _workflow(api, ["#DW create_persistent type=xfs capacity=1GiB name=keep"])
    _completed(api, creator, "Proposal")
    psi = ok(api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep"))
    assert psi["spec"]["fsType"] == "xfs" and psi["spec"]["userID"] == 1001
    ok(api.post(placement_path(NS, f"{creator}-0"), json={"computes": 1}))
    (alloc,) = [a for a in _allocations(api) if a["metadata"]["name"].startswith(f"{creator}-")]
    assert alloc["metadata"]["ownerReferences"][0]["kind"] == "PersistentStorageInstance"
    _advance(api, creator, "Setup")
    path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
    _set_status(api, path, {"state": "Ready", "fileSystem": {"type": "xfs"}})
    _completed(api, creator, "Setup")
    wait_for(
        lambda: (
            (ok(api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep")).get("status") or {}).get(
                "state"
            )
            == "Active"
        ),
        30,
        message="active",
    )
    _advance(api, creator, "Teardown")
    _completed(api, creator, "Teardown")
    assert ok(api.get(path))["metadata"].get("deletionTimestamp") is None  # outlives its creator

    user = _workflow(api, ["#DW persistentdw name=keep"])
    wf = _completed(api, user, "Proposal")
    assert wf["status"]["env"]["DW_PERSISTENT_keep"] == f"/mnt/slurmlink/{user}/persistent/keep"
    psi = ok(api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep"))
    assert {"kind": "Workflow", "name": user, "namespace": NS} in psi["spec"]["consumerReferences"]

    listed = _cli(server, "buffers", "list")
    assert listed.exit_code == 0, listed.output
    (row,) = [line.split() for line in listed.output.splitlines() if line.startswith("keep ")]
    assert row[1:4] == ["persistent", "xfs", "1GiB"] and row[5] == "1001" and row[6] == "Ready"
    refused_cli = _cli(server, "buffers", "destroy", "keep")
    assert refused_cli.exit_code != 0 and f"in use by job(s) {user[2:]}" in refused_cli.output

    destroyer = _workflow(api, ["#DW destroy_persistent name=keep"])

    def refused() -> dict[str, Any] | None:
        status = _get(api, destroyer).get("status") or {}
        return status if status.get("status") == "Error" else None

    status = wait_for(refused, 30, message="destroy refused while in use")
    assert f"in use by job {user[2:]}" in status["message"]

    _advance(api, user, "Teardown")
    _completed(api, user, "Teardown")
    assert not ok(api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep"))["spec"].get(
        "consumerReferences"
    )

    destroyer = _workflow(api, ["#DW destroy_persistent name=keep"])
    _completed(api, destroyer, "Proposal")
    _advance(api, destroyer, "Teardown")
    wait_for(lambda: ok(api.get(path))["metadata"].get("deletionTimestamp"), 30, message="alloc deleted")
    _drop_finalizers(api, path)
    _completed(api, destroyer, "Teardown")
    assert api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep").status_code == 404


MOVEMENTS = f"{SL}/namespaces/{NS}/datamovements"


def _movements(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    found = _items(client, f"{MOVEMENTS}?labelSelector=dataworkflowservices.github.io/workflow.name={name}")
    return sorted(found, key=lambda m: m["metadata"]["name"])


def _finish(client: httpx.Client, movement: dict[str, Any], outcome: str, **extra: Any) -> None:
    status = {"state": "Finished", "status": outcome, **extra}
    _set_status(client, f"{MOVEMENTS}/{movement['metadata']['name']}", status)


def _ready_buffer(
    api: httpx.Client, directives: list[str], computes: int
) -> tuple[str, list[dict[str, Any]]]:
    """A Workflow through Setup, its allocations reported Ready by the "agents"."""
    name = _workflow(api, directives)
    _completed(api, name, "Proposal")
    ok(api.post(placement_path(NS, f"{name}-0"), json={"computes": computes}))
    _advance(api, name, "Setup")
    allocations = [a for a in _allocations(api) if a["metadata"]["name"].startswith(f"{name}-")]
    for alloc in allocations:
        path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
        _set_status(api, path, {"state": "Ready", "fileSystem": {"type": "xfs"}})
    _completed(api, name, "Setup")
    return name, sorted(allocations, key=lambda a: a["spec"]["index"])


def _release(api: httpx.Client, allocations: list[dict[str, Any]]) -> None:
    for alloc in allocations:
        path = f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"
        wait_for(lambda p=path: ok(api.get(p))["metadata"].get("deletionTimestamp"), 30, message="deleted")
        _drop_finalizers(api, path)


def test_copies_become_data_movements_per_node_allocation(api: httpx.Client) -> None:
    name, allocations = _ready_buffer(
        api,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch",
            "#DW copy_in source=/lus/in destination=$DW_JOB_scratch/in",
            "#DW copy_out source=$DW_JOB_scratch/out destination=/lus/results",
        ],
        computes=2,
    )
    _advance(api, name, "DataIn")
    ins = wait_for(lambda: len(_movements(api, name)) == 2 and _movements(api, name), 30, message="copies in")
    assert [m["metadata"]["name"] for m in ins] == [f"{name}-1-0", f"{name}-1-1"]
    for movement, alloc in zip(ins, allocations, strict=True):  # copy_in fills every node's buffer
        spec = movement["spec"]
        assert spec["node"] == alloc["spec"]["node"] and spec["direction"] == "in"
        assert spec["source"] == {"path": "/lus/in"}
        assert spec["destination"]["path"] == "in"
        assert spec["destination"]["allocation"]["name"] == alloc["metadata"]["name"]
        assert (spec["userID"], spec["groupID"], spec["mode"]) == (1001, 1001, "auto")
        assert movement["metadata"]["ownerReferences"][0]["name"] == name
    _finish(api, ins[0], "Success", bytesDone=100, filesDone=2, seconds=0.5, rate=200.0)
    wait_for(lambda: "copying" in str(_get(api, name)["status"].get("message")), 30, message="waits")
    assert _get(api, name)["status"]["status"] != "Completed"
    _finish(api, ins[1], "Success", bytesDone=100, filesDone=2, seconds=0.5, rate=200.0)
    _completed(api, name, "DataIn")
    scraped = api.get("/metrics").text
    assert 'slurmlink_data_movement_bytes_total{direction="in"}' in scraped
    assert 'slurmlink_data_movement_rate_bytes_per_second_count{direction="in"}' in scraped

    ok(
        api.patch(
            f"{DWS}/namespaces/{NS}/computes/{name}",
            json={"data": [{"name": "c1"}, {"name": "c2"}]},
            headers=MERGE,
        )
    )
    for state in ("PreRun", "PostRun"):
        _advance(api, name, state)
        for mount in wait_for(
            lambda: [
                m
                for m in _items(api, f"{DWS}/namespaces/{NS}/clientmounts")
                if m["metadata"]["name"].startswith(name)
            ],
            30,
            message="mounts",
        ):
            want = "mounted" if state == "PreRun" else "unmounted"
            path = f"{DWS}/namespaces/{NS}/clientmounts/{mount['metadata']['name']}"
            wait_for(lambda p=path, w=want: ok(api.get(p))["spec"]["desiredState"] == w, 30, message=want)
            _set_status(api, path, {"allReady": True, "mounts": [{"state": want, "ready": True}]})
        _completed(api, name, state)

    _advance(api, name, "DataOut")
    outs = wait_for(
        lambda: [m for m in _movements(api, name) if m["spec"]["direction"] == "out"] or None,
        30,
        message="copies out",
    )
    # Each node's data in its own subdirectory, named after the node.
    assert [m["spec"]["destination"] for m in outs] == [
        {"path": "/lus/results/c1"},
        {"path": "/lus/results/c2"},
    ]
    assert [m["spec"]["source"]["path"] for m in outs] == ["out", "out"]
    _finish(api, outs[0], "Success")
    _finish(api, outs[1], "Failed", message="/lus/results: Permission denied")

    def failed() -> dict[str, Any] | None:
        status = _get(api, name).get("status") or {}
        return status if status.get("status") == "Error" else None

    status = wait_for(failed, 30, message="DataOut error")
    assert "/lus/results: Permission denied" in status["message"]
    assert "#DW copy_out source=$DW_JOB_scratch/out destination=/lus/results" in status["message"]

    _advance(api, name, "Teardown")
    for mount in _items(api, f"{DWS}/namespaces/{NS}/clientmounts"):
        if mount["metadata"]["name"].startswith(name):
            path = f"{DWS}/namespaces/{NS}/clientmounts/{mount['metadata']['name']}"
            wait_for(lambda p=path: ok(api.get(p))["metadata"].get("deletionTimestamp"), 30, message="gone")
            _drop_finalizers(api, path)
    _release(api, allocations)
    _completed(api, name, "Teardown")


def test_teardown_cancels_running_copies_and_waits_for_them(api: httpx.Client) -> None:
    name, allocations = _ready_buffer(
        api,
        [
            "#DW jobdw type=gluster capacity=1GiB name=shared",
            "#DW copy_in source=/lus/big destination=$DW_JOB_shared",
        ],
        computes=2,
    )
    _advance(api, name, "DataIn")
    (movement,) = wait_for(lambda: _movements(api, name) or None, 30, message="one copy for a shared buffer")
    assert movement["spec"]["node"] == allocations[0]["spec"]["node"]
    path = f"{MOVEMENTS}/{movement['metadata']['name']}"
    _set_status(api, path, {"state": "Running", "bytesDone": 10, "bytesTotal": 100})
    wait_for(lambda: "10%" in str(_get(api, name)["status"].get("message")), 30, message="progress")

    ok(
        api.patch(
            f"{DWS}/namespaces/{NS}/workflows/{name}",
            json={"spec": {"desiredState": "Teardown", "hurry": True}},
            headers=MERGE,
        )
    )
    wait_for(lambda: ok(api.get(path))["spec"].get("cancel") is True, 30, message="cancel asked")
    for alloc in allocations:  # the storage stays while the copy runs
        current = ok(api.get(f"{SL}/namespaces/{NS}/storageallocations/{alloc['metadata']['name']}"))
        assert not current["metadata"].get("deletionTimestamp")
    _set_status(api, path, {"state": "Finished", "status": "Cancelled", "message": "cancelled"})
    _release(api, allocations)
    _completed(api, name, "Teardown")
