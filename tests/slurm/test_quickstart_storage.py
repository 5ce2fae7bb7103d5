"""The quick start's storage: one agent inside each storage node, reaching the server over the cluster
network, its Storage Ready, default pools over them; restart, status and down.

One quick start (2 compute and 3 storage nodes, its own ports) serves the module; the last test takes
it down and checks that nothing is left, loop devices included.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.agent.device import mount_at
from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.slurm.devcluster import run_in_node
from slurmlink.supervise import process_alive
from support.agents import POOLS, STORAGES, loop_devices
from support.devcluster import (
    cluster_leftovers,
    held_namespaces,
    quickstart_cli,
)
from support.kubectl import run_kubectl
from support.quickstart import QuickStart, running_quickstart
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

NODES = ["storage1", "storage2", "storage3"]
GiB = 1024**3


@pytest.fixture(scope="module")
def qs() -> Iterator[QuickStart]:
    with running_quickstart("slurmlink-qs-storage-") as quick:
        yield quick


def storages(client: httpx.Client) -> dict[str, dict[str, Any]]:
    r = client.get(STORAGES)
    assert r.status_code == 200, r.text
    return {o["metadata"]["name"]: o for o in r.json()["items"]}


def test_three_storage_nodes_are_ready_and_in_the_default_pools(qs: QuickStart, kubectl_132: Path) -> None:
    assert qs.up_result is not None
    ready = "storage nodes storage1, storage2, storage3 Ready; pools xfs, gluster, dir, raw"
    assert ready in qs.up_result.stderr
    assert "kubectl get storagepools" in qs.up_result.stdout
    cluster = qs.cluster
    addresses = {node.name: node.address for node in cluster.storage_nodes}
    with qs.client() as client:
        found = storages(client)
        assert sorted(found) == NODES
        for name, obj in found.items():
            assert obj["status"]["status"] == "Ready", obj
            assert obj["spec"]["state"] == "Enabled"
            # The agent ran inside the node: it reached the server from the node's own address.
            assert obj["metadata"]["annotations"]["slurmlink.io/address"] == addresses[name]
            [device] = obj["status"]["devices"]
            assert device["model"] == "loop device" and device["capacity"] == 4 * GiB
            assert device["serialNumber"] == str(qs.dir / "storage" / f"{name}.img")
            assert 3 * GiB < obj["status"]["capacity"] < 4 * GiB  # XFS on the 4 GiB loop file

        def pools_list_every_node() -> dict[str, Any] | None:
            r = client.get(POOLS)
            pools = {p["metadata"]["name"]: p for p in r.json()["items"]}
            ok = set(pools) >= {"xfs", "dir", "raw"} and all(
                [n["name"] for n in (pools[p].get("status") or {}).get("nodes") or []] == NODES
                for p in ("xfs", "dir", "raw")
            )
            return pools if ok else None

        pools = wait_for(pools_list_every_node, 30, message="the default pools to list the storage nodes")
    for name, types in (("xfs", ["xfs"]), ("dir", ["dir"]), ("raw", ["raw"])):
        pool = pools[name]
        assert pool["spec"]["fileSystemTypes"] == types and pool["spec"]["nodes"] == NODES
        assert pool["status"]["freeGranules"] == pool["status"]["totalGranules"] == 9  # 3 GiB a node
        assert pool["status"]["conditions"][0]["status"] == "True"
    r = run_kubectl(kubectl_132, qs.admin, "get", "storages", "-A")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[:5] for row in rows] == [["default", n, "Enabled", "Ready", "Live"] for n in NODES]
    r = run_kubectl(kubectl_132, qs.admin, "get", "storagepools")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["dir"][1:6] == ["dir", "1GiB", "9GiB", "9GiB", "3"], r.stdout


def test_each_agent_runs_inside_its_node_and_reaches_the_server_over_the_bridge(qs: QuickStart) -> None:
    cluster = qs.cluster
    port = qs.listen.rsplit(":", 1)[1]
    for node in cluster.storage_nodes:
        pid = qs.agent_pid(node.name)
        assert pid is not None
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(node.net_ns).st_ino
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(node.mnt_ns).st_ino
        state = qs.dir / "storage" / node.name
        creds = load_kubeconfig(state / "node-agent.kubeconfig")
        assert creds.server == f"https://{cluster.controller_address}:{port}"
        # The pool is mounted in the node's mount namespace only.
        pool = state / "pool"
        inside = run_in_node(node, ["findmnt", "--noheadings", "--output", "FSTYPE", str(pool)])
        assert inside.returncode == 0 and inside.stdout.strip() == "xfs", inside
        assert mount_at(pool) is None
        assert len(loop_devices(qs.dir / "storage" / f"{node.name}.img")) == 1
    # And one compute-mode agent inside each compute node (it performs the node's ClientMounts).
    for node in cluster.compute_nodes:
        pid = qs.agent_pid(node.name)
        assert pid is not None and process_alive(pid), node.name
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(node.mnt_ns).st_ino
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert "--compute" in argv and argv[argv.index("--node") + 1] == node.name
        creds = load_kubeconfig(qs.dir / "storage" / node.name / "node-agent.kubeconfig")
        assert creds.server == f"https://{cluster.controller_address}:{port}"
    with qs.client() as client:
        for node in cluster.compute_nodes:
            r = client.get(f"/apis/coordination.k8s.io/v1/namespaces/slurmlink-node-lease/leases/{node.name}")
            assert r.status_code == 200 and r.json()["spec"]["holderIdentity"] == node.name, r.text


def test_status_shows_the_agents(qs: QuickStart) -> None:
    status = quickstart_cli("status", *qs.where, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for node in NODES:
        line = next(line for line in status.stdout.splitlines() if f"agent {node}" in line)
        assert "running" in line and "Storage Ready" in line, status.stdout
    for node in ("compute1", "compute2"):
        line = next(line for line in status.stdout.splitlines() if f"agent {node}" in line)
        assert "running" in line and "compute" in line, status.stdout


def test_up_again_keeps_the_agents_and_restarts_a_killed_one(qs: QuickStart) -> None:
    pids = {node: qs.agent_pid(node) for node in NODES}
    with qs.client() as client:
        before = storages(client)
    image = qs.dir / "storage" / "storage2.img"
    devices = loop_devices(image)
    os.kill(pids["storage2"], 9)  # type: ignore[arg-type]
    wait_for(lambda: not process_alive(pids["storage2"] or 0), 10, message="the agent to die")
    again = quickstart_cli("up", *qs.where, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "starting the storage agent on storage2" in again.stderr
    assert "starting the storage agent on storage1" not in again.stderr
    for node in ("storage1", "storage3"):
        assert qs.agent_pid(node) == pids[node]
    assert qs.agent_pid("storage2") != pids["storage2"]
    assert loop_devices(image) == devices  # re-attached: the same device, no second one
    with qs.client() as client:
        after = storages(client)
    assert {n: o["metadata"]["uid"] for n, o in after.items()} == {
        n: o["metadata"]["uid"] for n, o in before.items()
    }
    assert after["storage2"]["status"]["status"] == "Ready"
    settings = json.loads((qs.dir / "quickstart.json").read_text())
    assert settings["storage_size"] == "4GiB"


def test_down_stops_the_agents_and_frees_the_loop_devices(qs: QuickStart) -> None:
    cluster = qs.cluster
    network = cluster.network
    pids = [qs.agent_pid(node) for node in NODES]
    images = [qs.dir / "storage" / f"{node}.img" for node in NODES]
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert all(str(image) in attached for image in images)
    with held_namespaces(cluster) as ns_ids:
        down = qs.down()
        assert down.returncode == 0, down.stderr
        assert not qs.dir.exists()
        assert cluster_leftovers(qs.dir, network, ns_ids) == []
    for pid in pids:
        # Stopped: gone, or a zombie its parent (init, for a detached agent) has not reaped yet.
        assert pid is not None and not process_alive(pid)
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert str(qs.dir) not in attached, attached
