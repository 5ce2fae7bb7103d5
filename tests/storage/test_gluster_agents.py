"""A gluster burst buffer made by three storage agents, each acting on its own node only.

A real ``slurmlink serve`` (also listening on a bridge); three storage agents, each inside a network
namespace on that bridge and a pinned mount namespace of its own (as the dev cluster's storage nodes),
each with its node's glusterd; a compute agent in a mount namespace of its own on the host's network,
which reaches the storage nodes over the bridge. The test plays placement and the driver: it creates
the set of StorageAllocations (one brick per node, ``spec.servers`` all three) and a ClientMount as
admin with their finalizers, and checks the volume, its bricks, the mount, and that deletion releases
all of it — with one storage agent killed (``kill -9``) and restarted while the buffer is made, and
another while it is destroyed.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.agent.device import release_loop_file
from slurmlink.storage.filesystems import Glusterd, StorageNode, mounts
from slurmlink.storage.filesystems.runner import NodeRunner
from support.agents import AgentProcess, wait_storage
from support.netns import MountNamespaces, NetworkLab
from support.postgres import free_port
from support.server import ServerProcess
from support.storage import (
    JOB_GID,
    JOB_UID,
    MIB,
    as_job_user,
    cleanup_below,
    loop_devices_below,
    world_searchable_dir,
)
from support.waiting import wait_for

pytestmark = [pytest.mark.storage, pytest.mark.timeout(600)]

ALLOCATIONS = "/apis/slurmlink.io/v1/namespaces/default/storageallocations"
CLIENT_MOUNTS = "/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default/clientmounts"
MERGE = {"Content-Type": "application/merge-patch+json"}
STORAGE_NODES = ("s1", "s2", "s3")


@dataclass
class Cluster:
    server: ServerProcess
    admin: httpx.Client
    work: Path
    net: NetworkLab
    namespaces: MountNamespaces
    url: str
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    runs: int = 0

    def address(self, node: str) -> str:
        return self.net.nodes[STORAGE_NODES.index(node)].address

    def runner(self, node: str) -> NodeRunner:
        """Inside a node: its network namespace (storage nodes) and its mount namespace."""
        prefix = ["nsenter", f"--mount={self.namespaces.pin(node)}"]
        if node in STORAGE_NODES:
            prefix.append(f"--net=/run/netns/{self.net.nodes[STORAGE_NODES.index(node)].netns}")
        return NodeRunner(node, prefix=(*prefix, "--"))

    def pool(self, node: str) -> Path:
        return self.work / node / "pool"

    def image(self, node: str) -> Path:
        return self.work / f"{node}.img"

    def start(self, node: str) -> AgentProcess:
        self.runs += 1
        config = self.server.issue_kubeconfig(None, "node-agent", node=node, server_url=self.url)
        if node in STORAGE_NODES:
            args = [
                *("--loop-file", str(self.image(node)), "--size", "512MiB"),
                *("--state-dir", str(self.work / node), "--address", self.address(node)),
            ]
        else:
            args = ["--compute", "--state-dir", str(self.work / node)]
        args += ["--heartbeat-interval", "0.3"]
        prefix = list(self.runner(node).prefix)
        agent = AgentProcess(node, config, args, self.work / f"{node}-{self.runs}.log", prefix)
        self.agents[node] = agent.start()
        return agent

    def glusterd(self, node: str) -> Glusterd:
        return Glusterd(StorageNode(node, str(self.pool(node)), self.address(node)), self.runner(node))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("glusterd") is None or shutil.which("glusterfs") is None:
        pytest.fail(
            "glusterd/glusterfs missing: run scripts/install-system-packages (glusterfs-server, -client)"
        )
    work = world_searchable_dir("slurmlink-gluster-agents-")
    started: list[Cluster] = []
    try:
        with (
            NetworkLab(len(STORAGE_NODES)) as net,
            MountNamespaces(work / "ns", [*STORAGE_NODES, "c1"]) as namespaces,
        ):
            port = free_port()
            server = ServerProcess(
                tmp_path_factory.mktemp("serve") / "state",
                port=port,
                extra_args=("--extra-listen", f"{net.host_address}:{port}"),
            )
            server.start()
            try:
                with server.client() as admin:
                    c = Cluster(server, admin, work, net, namespaces, f"https://{net.host_address}:{port}")
                    started.append(c)
                    for node in [*STORAGE_NODES, "c1"]:
                        c.start(node)
                    for node in STORAGE_NODES:
                        wait_storage(admin, node, "Ready", timeout=90)
                    yield c
            finally:
                for c in started:
                    for agent in c.agents.values():
                        agent.stop()
                    for node in STORAGE_NODES:  # the agents leave glusterd running, as a service
                        with contextlib.suppress(Exception):
                            c.glusterd(node).stop()
                server.stop()
                namespaces.close(below=work)
    finally:
        for node in STORAGE_NODES:
            with contextlib.suppress(Exception):
                release_loop_file(work / f"{node}.img")
        cleanup_below(work)
        shutil.rmtree(work, ignore_errors=True)


def get(admin: httpx.Client, path: str) -> dict[str, Any] | None:
    r = admin.get(path)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return dict(r.json())


def create(admin: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = admin.post(path, json=body)
    assert r.status_code == 201, r.text


def brick_body(name: str, index: int, capacity: int) -> dict[str, Any]:
    """What placement makes for brick ``index`` of a gluster set over s1, s2, s3."""
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StorageAllocation",
        "metadata": {"name": f"{name}-{index}", "finalizers": ["slurmlink.io/storage-node"]},
        "spec": {
            "node": STORAGE_NODES[index],
            "capacity": capacity,
            "index": index,
            "fsType": "gluster",
            "pool": "test",
            "lifetime": "job",
            "fileSystem": f"default-{name}",
            "servers": list(STORAGE_NODES),
            "userID": JOB_UID,
            "groupID": JOB_GID,
        },
    }


def clientmount_body(name: str, allocation: str, path: Path) -> dict[str, Any]:
    reference = {"kind": "StorageAllocation", "name": allocation, "namespace": "default"}
    return {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "ClientMount",
        "metadata": {"name": name, "finalizers": ["slurmlink.io/compute-node"]},
        "spec": {
            "node": "c1",
            "desiredState": "mounted",
            "mounts": [
                {
                    "mountPath": str(path),
                    "type": "gluster",
                    "device": {"type": "reference", "deviceReference": {"objectReference": reference}},
                    "userID": JOB_UID,
                    "groupID": JOB_GID,
                    "options": "",
                    "setPermissions": True,
                    "targetType": "directory",
                }
            ],
        },
    }


def states(admin: httpx.Client, names: list[str]) -> list[str | None]:
    return [((get(admin, f"{ALLOCATIONS}/{n}") or {}).get("status") or {}).get("state") for n in names]


def wait_mount_status(admin: httpx.Client, name: str, state: str, timeout: float = 90) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(admin, f"{CLIENT_MOUNTS}/{name}")
        status = (obj or {}).get("status") or {}
        mounts_ = status.get("mounts") or []
        ok = status.get("allReady") and mounts_ and all(m["state"] == state for m in mounts_)
        return obj if ok else None

    return wait_for(probe, timeout, interval=0.2, message=f"ClientMount {name} {state} and ready")


def wait_gone(admin: httpx.Client, path: str, timeout: float = 90) -> None:
    wait_for(lambda: get(admin, path) is None, timeout, interval=0.2, message=f"{path} deleted")


def test_three_agents_make_mount_and_destroy_a_gluster_buffer(cluster: Cluster) -> None:
    admin = cluster.admin
    names = [f"g1-{i}" for i in range(3)]
    volume = "default-g1"
    for index in range(3):
        create(admin, ALLOCATIONS, brick_body("g1", index, 64 * MIB))

    # kill -9 of a brick agent while it makes its brick (or just after); its restart converges.
    cluster.agents["s2"].wait_log("starting glusterd", timeout=60)
    cluster.agents["s2"].kill9()
    cluster.start("s2")

    # Bricks are published while the lead waits for them; then every allocation is Ready.
    wait_for(lambda: states(admin, names) == ["Ready"] * 3, 180, interval=0.3, message="all Ready")
    objs = [get(admin, f"{ALLOCATIONS}/{n}") or {} for n in names]
    record = objs[0]["status"]["fileSystem"]
    assert record["type"] == "gluster" and record["state"] == "ready"
    assert record["details"]["volume"] == volume
    assert [s["address"] for s in record["servers"]] == [cluster.address(n) for n in STORAGE_NODES]
    assert record["allocation"]["capacity"] == 3 * 64 * MIB
    assert all(o["status"]["fileSystem"] == record for o in objs)
    bricks = record["details"]["bricks"]
    assert [b["node"] for b in bricks] == list(STORAGE_NODES)
    for node in STORAGE_NODES:
        assert cluster.glusterd(node).volumes() == [volume]  # one pool, one volume

    # The compute agent mounts it from allocation 0's record (FUSE, over the bridge).
    path = cluster.work / "mnt" / "g1"
    create(admin, CLIENT_MOUNTS, clientmount_body("cm-g1", names[0], path))
    wait_mount_status(admin, "cm-g1", "mounted")
    c1 = cluster.runner("c1")
    current = mounts.mounted_at(c1, str(path))
    assert current is not None and current.fstype == "fuse.glusterfs"
    files = [f"f{i}" for i in range(30)]
    for name in files:
        c1.run(as_job_user(["sh", "-c", f"echo {name} > {path}/{name}"]))
    assert sorted(c1.run(["ls", str(path)]).stdout.split()) == sorted(files)
    per_brick = [
        set(cluster.runner(b["node"]).run(["ls", b["path"]]).stdout.split()) - {".glusterfs"} for b in bricks
    ]
    assert all(per_brick), per_brick  # spread over the three bricks
    assert set.union(*per_brick) == set(files)

    # Unmounted and deleted by the driver, then the allocations; a kill -9 of the lead's agent just
    # as the deletion starts, and its restart, converge too.
    r = admin.patch(f"{CLIENT_MOUNTS}/cm-g1", json={"spec": {"desiredState": "unmounted"}}, headers=MERGE)
    assert r.status_code == 200, r.text
    wait_mount_status(admin, "cm-g1", "unmounted")
    assert mounts.mounted_at(c1, str(path)) is None
    assert admin.delete(f"{CLIENT_MOUNTS}/cm-g1").status_code == 200
    wait_gone(admin, f"{CLIENT_MOUNTS}/cm-g1")

    for name in reversed(names):  # the bricks first: they wait for the volume to go
        assert admin.delete(f"{ALLOCATIONS}/{name}").status_code == 200
    time.sleep(0.3)
    cluster.agents["s1"].kill9()
    cluster.start("s1")
    for name in names:
        wait_gone(admin, f"{ALLOCATIONS}/{name}")

    for node in STORAGE_NODES:
        glusterd = cluster.glusterd(node)
        assert glusterd.volumes() == []
        runner = cluster.runner(node)
        run_dir = glusterd.layout.volume_run_dir(volume)
        assert runner.run(["ls", "-A", run_dir], check=False).stdout.split() == []
        assert runner.run(["test", "-e", f"{cluster.pool(node)}/{volume}"], check=False).returncode != 0
        assert runner.run(["ls", f"{glusterd.layout.log_dir}/bricks"], check=False).stdout.split() == []
    left = set(loop_devices_below(cluster.work).values())
    assert left == {str(cluster.image(n)) for n in STORAGE_NODES}  # only the pools' own
