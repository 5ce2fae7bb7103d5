"""Burst buffers through the node agents, for real: StorageAllocations and ClientMounts.

A real ``slurmlink serve``; a storage agent on a loop file inside "node" s1 and a compute agent
(``--compute``) inside "node" c1, each a pinned mount namespace (as the dev cluster's nodes are, minus
the network), both with node-agent credentials. The test plays placement and the driver: it creates
StorageAllocations and ClientMounts as admin, with their finalizers, and checks what the agents made
on the nodes — file systems, mounts, loop devices — and that deletion releases all of it. The storage
node's pool and an xfs buffer's loop device are only mounted inside s1, so c1 finds them through the
published record (``details.device``, ``details.poolDevice``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.agent.device import release_loop_file
from slurmlink.mover.journal import verified_count
from slurmlink.storage.filesystems import mounts
from slurmlink.storage.filesystems.runner import NodeRunner
from support import trees
from support.agents import AgentProcess, lease, loop_devices, wait_storage
from support.netns import MountNamespaces
from support.server import ServerProcess
from support.storage import (
    JOB_GID,
    JOB_UID,
    as_job_user,
    cleanup_below,
    loop_devices_below,
    world_searchable_dir,
    write_file_argv,
)
from support.waiting import wait_for

pytestmark = [pytest.mark.storage, pytest.mark.timeout(300)]

ALLOCATIONS = "/apis/slurmlink.io/v1/namespaces/default/storageallocations"
CLIENT_MOUNTS = "/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default/clientmounts"
MERGE = {"Content-Type": "application/merge-patch+json"}
MiB = 1 << 20


@dataclass
class Nodes:
    server: ServerProcess
    admin: httpx.Client
    work: Path
    namespaces: MountNamespaces
    storage_agent: AgentProcess
    compute_agent: AgentProcess
    image: Path
    runs: int = 0

    @property
    def s1(self) -> NodeRunner:
        return self.namespaces.runners["s1"]

    @property
    def c1(self) -> NodeRunner:
        return self.namespaces.runners["c1"]

    @property
    def pool(self) -> Path:
        return self.work / "s1" / "pool"

    def agent(self, node: str, args: list[str]) -> AgentProcess:
        self.runs += 1
        config = self.server.issue_kubeconfig(None, "node-agent", node=node)
        prefix = ["nsenter", f"--mount={self.namespaces.pin(node)}", "--"]
        return AgentProcess(node, config, args, self.work / f"{node}-{self.runs}.log", prefix)

    def restart_storage_agent(self) -> AgentProcess:
        self.storage_agent = self.agent("s1", storage_args(self.work, self.image)).start()
        return self.storage_agent

    def restart_compute_agent(self) -> AgentProcess:
        self.compute_agent = self.agent("c1", compute_args(self.work)).start()
        return self.compute_agent


def storage_args(work: Path, image: Path) -> list[str]:
    return [
        *("--loop-file", str(image), "--size", "2GiB", "--state-dir", str(work / "s1")),
        *("--heartbeat-interval", "0.3"),
    ]


def compute_args(work: Path) -> list[str]:
    return ["--compute", "--state-dir", str(work / "c1"), "--heartbeat-interval", "0.3"]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    server = ServerProcess(tmp_path_factory.mktemp("serve") / "state")
    server.start()
    work = world_searchable_dir("slurmlink-agents-")
    image = work / "s1.img"
    namespaces = MountNamespaces(work / "ns", ["s1", "c1"])
    started: list[Nodes] = []
    try:
        with server.client() as admin, namespaces:
            placeholder = AgentProcess("s1", Path("/nonexistent"), [], work / "unused.log")
            n = Nodes(server, admin, work, namespaces, placeholder, placeholder, image)
            started.append(n)
            n.restart_storage_agent()
            n.restart_compute_agent()
            wait_storage(admin, "s1", "Ready", timeout=60)
            yield n
    finally:
        for n in started:
            n.storage_agent.stop()
            n.compute_agent.stop()
        namespaces.close(below=work)
        with contextlib.suppress(Exception):
            release_loop_file(image)
        cleanup_below(work)
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


def allocation_body(name: str, fs_type: str, capacity: int = 64 * MiB) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StorageAllocation",
        "metadata": {"name": name, "finalizers": ["slurmlink.io/storage-node"]},
        "spec": {
            "node": "s1",
            "capacity": capacity,
            "index": 0,
            "fsType": fs_type,
            "pool": "test",
            "lifetime": "job",
            "fileSystem": f"default-{name}",
            "userID": JOB_UID,
            "groupID": JOB_GID,
        },
    }


def clientmount_body(name: str, allocation: str, fs_type: str, path: Path) -> dict[str, Any]:
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
                    "type": fs_type,
                    "device": {
                        "type": "reference",
                        "deviceReference": {
                            "objectReference": {
                                "kind": "StorageAllocation",
                                "name": allocation,
                                "namespace": "default",
                            }
                        },
                    },
                    "userID": JOB_UID,
                    "groupID": JOB_GID,
                    "options": "",
                    "setPermissions": True,
                    "targetType": "directory",
                }
            ],
        },
    }


def get(admin: httpx.Client, path: str) -> dict[str, Any] | None:
    r = admin.get(path)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return dict(r.json())


def create(admin: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = admin.post(path, json=body)
    assert r.status_code == 201, r.text


def wait_allocation(admin: httpx.Client, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(admin, f"{ALLOCATIONS}/{name}")
        return obj if obj and (obj.get("status") or {}).get("state") == state else None

    return wait_for(probe, timeout, interval=0.1, message=f"StorageAllocation {name} {state}")


def wait_mount_status(admin: httpx.Client, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(admin, f"{CLIENT_MOUNTS}/{name}")
        status = (obj or {}).get("status") or {}
        mounts_ = status.get("mounts") or []
        ok = status.get("allReady") and mounts_ and all(m["state"] == state for m in mounts_)
        return obj if ok else None

    return wait_for(probe, timeout, interval=0.1, message=f"ClientMount {name} {state} and ready")


def wait_gone(admin: httpx.Client, path: str, timeout: float = 30) -> None:
    wait_for(lambda: get(admin, path) is None, timeout, interval=0.1, message=f"{path} deleted")


def test_an_xfs_buffer_is_made_mounted_on_the_compute_node_and_released(nodes: Nodes) -> None:
    admin = nodes.admin
    create(admin, ALLOCATIONS, allocation_body("x1", "xfs"))
    # kill -9 the storage agent while it creates the file system; the next one converges.
    nodes.storage_agent.wait_log("creating xfs file system default-x1", timeout=60)
    nodes.storage_agent.kill9()
    nodes.restart_storage_agent()
    obj = wait_allocation(admin, "x1", "Ready")
    record = obj["status"]["fileSystem"]
    image = f"{nodes.pool}/default-x1/xfs.img"
    assert record["type"] == "xfs" and record["state"] == "ready"
    assert record["details"]["image"] == image
    device = record["details"]["device"]
    assert device.startswith("/dev/loop")
    attached = [d for d, back in loop_devices_below(nodes.work).items() if back == image]
    assert attached == [device]  # one loop device, the published one, whatever the crash left

    path = nodes.work / "mnt" / "x1"
    create(admin, CLIENT_MOUNTS, clientmount_body("cm-x1", "x1", "xfs", path))
    cm = wait_mount_status(admin, "cm-x1", "mounted")
    assert cm["status"]["mounts"] == [{"state": "mounted", "ready": True}]
    assert "error" not in cm["status"]
    current = mounts.mounted_at(nodes.c1, str(path))
    assert current is not None and current.fstype == "xfs" and current.source == device
    assert mounts.mounted_at(nodes.s1, str(path)) is None  # only on the compute node
    # The job writes through the mount, as its own user.
    nodes.c1.run(as_job_user(write_file_argv(f"{path}/data", 4)))
    assert nodes.c1.run(["stat", "-c", "%s %u", f"{path}/data"]).stdout.split() == [
        str(4 * MiB),
        str(JOB_UID),
    ]
    assert (lease(admin, "c1") or {}).get("spec", {}).get("holderIdentity") == "c1"

    # kill -9 of the compute agent, the mount lost meanwhile: the restarted agent mounts it again.
    nodes.compute_agent.kill9()
    nodes.c1.run(["umount", str(path)])
    nodes.restart_compute_agent()
    wait_for(lambda: mounts.mounted_at(nodes.c1, str(path)), 30, message="the re-mount")
    assert nodes.c1.run(["stat", "-c", "%s", f"{path}/data"]).stdout.strip() == str(4 * MiB)

    # Deleting the allocation while the compute node has it mounted: "still in use", retried.
    assert admin.delete(f"{ALLOCATIONS}/x1").status_code == 200

    def in_use() -> dict[str, Any] | None:
        o = get(admin, f"{ALLOCATIONS}/x1") or {}
        return o if "still in use" in ((o.get("status") or {}).get("message") or "") else None

    busy = wait_for(in_use, 30, interval=0.1, message="the 'still in use' report")
    assert busy["status"]["state"] == "Deleting"
    assert attached == [d for d, back in loop_devices_below(nodes.work).items() if back == image]

    # The driver unmounts it: then the storage agent's retry destroys it and lets the object go.
    r = admin.patch(f"{CLIENT_MOUNTS}/cm-x1", json={"spec": {"desiredState": "unmounted"}}, headers=MERGE)
    assert r.status_code == 200, r.text
    cm = wait_mount_status(admin, "cm-x1", "unmounted")
    assert mounts.mounted_at(nodes.c1, str(path)) is None
    wait_gone(admin, f"{ALLOCATIONS}/x1")
    assert not any(back == image for back in loop_devices_below(nodes.work).values())
    assert nodes.s1.run(["test", "-e", f"{nodes.pool}/default-x1"], check=False).returncode != 0
    assert admin.delete(f"{CLIENT_MOUNTS}/cm-x1").status_code == 200
    wait_gone(admin, f"{CLIENT_MOUNTS}/cm-x1")
    assert not (nodes.work / "c1" / "mounts" / f"{cm['metadata']['uid']}.json").exists()


def test_a_dir_buffer_is_seen_through_the_storage_nodes_pool_device(nodes: Nodes) -> None:
    admin = nodes.admin
    create(admin, ALLOCATIONS, allocation_body("d1", "dir"))
    obj = wait_allocation(admin, "d1", "Ready")
    details = obj["status"]["fileSystem"]["details"]
    [pool_device] = loop_devices(nodes.image)
    assert details["poolDevice"] == pool_device and details["poolUuid"]
    assert mounts.mounted_at(nodes.c1, str(nodes.pool)) is None  # the pool is s1's alone so far

    path = nodes.work / "mnt" / "d1"
    create(admin, CLIENT_MOUNTS, clientmount_body("cm-d1", "d1", "dir", path))
    wait_mount_status(admin, "cm-d1", "mounted")
    nodes.c1.run(as_job_user(write_file_argv(f"{path}/out", 1)))
    # Written on the compute node, there on the storage node.
    data = f"{nodes.pool}/default-d1/data/out"
    assert nodes.s1.run(["stat", "-c", "%s", data]).stdout.strip() == str(MiB)

    # Deleting the ClientMount unmounts (and lets the pool go from c1), then its finalizer goes.
    assert admin.delete(f"{CLIENT_MOUNTS}/cm-d1").status_code == 200
    wait_gone(admin, f"{CLIENT_MOUNTS}/cm-d1")
    assert mounts.mounted_at(nodes.c1, str(path)) is None
    assert mounts.mounted_at(nodes.c1, str(nodes.pool)) is None
    assert mounts.mounted_at(nodes.s1, str(nodes.pool)) is not None  # s1's own pool stays

    assert admin.delete(f"{ALLOCATIONS}/d1").status_code == 200
    wait_gone(admin, f"{ALLOCATIONS}/d1")
    assert nodes.s1.run(["test", "-e", f"{nodes.pool}/default-d1"], check=False).returncode != 0


def test_a_storage_agent_restart_restores_ready_allocations(nodes: Nodes) -> None:
    """A Ready allocation whose loop device is gone (a reboot) is re-attached before anything else."""
    admin = nodes.admin
    create(admin, ALLOCATIONS, allocation_body("r1", "xfs"))
    obj = wait_allocation(admin, "r1", "Ready")
    image = f"{nodes.pool}/default-r1/xfs.img"
    nodes.storage_agent.stop()
    subprocess.run(["losetup", "--detach", obj["status"]["fileSystem"]["details"]["device"]], check=True)
    wait_for(
        lambda: not any(back == image for back in loop_devices_below(nodes.work).values()),
        10,
        message="the loop device detached",
    )
    agent = nodes.restart_storage_agent()
    agent.wait_log("restoring 1 allocation(s)", timeout=60)

    def reattached() -> list[str]:
        return [d for d, back in loop_devices_below(nodes.work).items() if back == image]

    [device] = wait_for(reattached, 30, message="the loop device re-attached")
    wait_for(
        lambda: (get(admin, f"{ALLOCATIONS}/r1") or {}).get("status", {}).get("fileSystem", {})
        .get("details", {}).get("device") == device,
        30,
        message="the record naming the re-attached device",
    )  # fmt: skip
    assert admin.delete(f"{ALLOCATIONS}/r1").status_code == 200
    wait_gone(admin, f"{ALLOCATIONS}/r1")
    assert reattached() == []


# ---- data movement: the storage agent copies into and out of its buffers, as the job's user ------------

MOVEMENTS = "/apis/slurmlink.io/v1/namespaces/default/datamovements"
#: Files of the resume and cancel test: enough that copying them takes seconds.
FILES = 20000


def movement_body(name: str, source: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    direction = "in" if destination.get("allocation") else "out"
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "DataMovement",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "destination": destination,
            "mode": "auto",
            "direction": direction,
            "node": "s1",
            "userID": JOB_UID,
            "groupID": JOB_GID,
        },
    }


def in_buffer(allocation: str, path: str) -> dict[str, Any]:
    return {
        "path": path,
        "allocation": {"kind": "StorageAllocation", "name": allocation, "namespace": "default"},
    }


def wait_movement(admin: httpx.Client, name: str, timeout: float = 120, **want: Any) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = (get(admin, f"{MOVEMENTS}/{name}") or {}).get("status") or {}
        return status if all(status.get(k) == v for k, v in want.items()) else None

    return wait_for(probe, timeout, interval=0.05, message=f"DataMovement {name} {want}")


def copying(admin: httpx.Client, name: str, files: int, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = (get(admin, f"{MOVEMENTS}/{name}") or {}).get("status") or {}
        return (
            status if status.get("state") == "Running" and (status.get("filesDone") or 0) >= files else None
        )

    return wait_for(probe, timeout, interval=0.02, message=f"DataMovement {name} under way")


def test_a_tree_is_copied_into_an_xfs_buffer_and_back_as_the_job_user(nodes: Nodes) -> None:
    admin = nodes.admin
    create(admin, ALLOCATIONS, allocation_body("m1", "xfs"))
    wait_allocation(admin, "m1", "Ready")
    source = nodes.work / "pfs-m1" / "tree"
    source.parent.mkdir()
    os.chown(source.parent, JOB_UID, JOB_GID)
    trees.make_tree(source, JOB_UID, JOB_GID)

    create(admin, MOVEMENTS, movement_body("m1-in", {"path": str(source)}, in_buffer("m1", "input")))
    status = wait_movement(admin, "m1-in", state="Finished")
    assert status["status"] == "Success", status
    # a.txt, b.bin, run.sh, private; the two links are links
    assert status["filesDone"] == 4 and status["checksumsVerified"] == 4, status
    assert status["bytesDone"] == status["bytesTotal"] > 1 << 20 and status["links"] == 2, status
    staging = nodes.work / "s1" / "staging" / "m1"
    assert mounts.mounted_at(nodes.s1, str(staging)) is None  # unmounted once the copy is done

    results = nodes.work / "pfs-m1" / "results"
    create(admin, MOVEMENTS, movement_body("m1-out", in_buffer("m1", "input"), {"path": str(results)}))
    status = wait_movement(admin, "m1-out", state="Finished")
    assert status["status"] == "Success", status.get("message")
    # There and back: contents, modes, times, links (the /etc link still a link, /etc never read).
    assert trees.digest(results) == trees.digest(source)
    assert trees.owners(results) == {JOB_UID}
    assert (results / "etc-link").is_symlink() and str((results / "etc-link").readlink()) == "/etc"

    # The job's user cannot write where its shell could not: root's directory stays empty.
    closed = nodes.work / "pfs-m1" / "roots"
    closed.mkdir(mode=0o755)
    create(admin, MOVEMENTS, movement_body("m1-denied", in_buffer("m1", "input"), {"path": f"{closed}/x"}))
    status = wait_movement(admin, "m1-denied", state="Finished")
    assert status["status"] == "Failed" and "Permission denied" in status["message"], status
    assert list(closed.iterdir()) == []
    for name in ("m1-in", "m1-out", "m1-denied"):
        assert admin.delete(f"{MOVEMENTS}/{name}").status_code == 200
    assert admin.delete(f"{ALLOCATIONS}/m1").status_code == 200
    wait_gone(admin, f"{ALLOCATIONS}/m1")


def test_a_killed_agent_resumes_a_copy_and_cancel_stops_one(nodes: Nodes) -> None:
    admin = nodes.admin
    # 1 GiB: below 300 MB mkfs.xfs needs its test-only small geometry, and under load the resumed copy
    # then met ENOSPC with two thirds of that file system free; the pool file is sparse either way.
    create(admin, ALLOCATIONS, allocation_body("m2", "xfs", capacity=1024 * MiB))
    wait_allocation(admin, "m2", "Ready")
    source = nodes.work / "pfs-m2"
    trees.fill(source, FILES, 4096)
    for path in [source, *source.rglob("*")]:
        os.lchown(path, JOB_UID, JOB_GID)

    create(admin, MOVEMENTS, movement_body("m2-in", {"path": str(source)}, in_buffer("m2", "data")))
    copying(admin, "m2-in", 500)
    uid = get(admin, f"{MOVEMENTS}/m2-in")["metadata"]["uid"]  # type: ignore[index]
    nodes.storage_agent.kill9()
    journal = nodes.work / "s1" / "movements" / f"{uid}.journal"
    verified = verified_count(journal)  # files verified before the kill
    assert verified > 0
    nodes.restart_storage_agent()
    status = wait_movement(admin, "m2-in", 180, state="Finished")
    assert status["status"] == "Success" and status["restarts"] == 1, (status.get("message"), status)
    # Every file verified before the kill was skipped, not copied again; the others were copied and verified.
    assert status["filesSkipped"] == verified, json.dumps(status)
    assert status["filesDone"] == status["checksumsVerified"] == FILES - verified, json.dumps(status)

    results = nodes.work / "pfs-m2-back"
    results.mkdir()
    os.chown(results, JOB_UID, JOB_GID)
    create(admin, MOVEMENTS, movement_body("m2-out", in_buffer("m2", "data"), {"path": f"{results}/data"}))
    copying(admin, "m2-out", 0)  # cancelled as soon as it runs: well before its last file
    asked = time.monotonic()
    r = admin.patch(f"{MOVEMENTS}/m2-out", json={"spec": {"cancel": True}}, headers=MERGE)
    assert r.status_code == 200, r.text
    status = wait_movement(admin, "m2-out", 30, state="Finished")
    assert time.monotonic() - asked < 5 and status["status"] == "Cancelled", status
    assert status.get("filesDone", 0) < FILES
    r = admin.patch(f"{MOVEMENTS}/m2-out", json={"spec": {"cancel": False}}, headers=MERGE)
    assert r.status_code == 422 and "spec.cancel" in r.text  # a cancelled copy stays cancelled
    assert mounts.mounted_at(nodes.s1, str(nodes.work / "s1" / "staging" / "m2")) is None
    for name in ("m2-in", "m2-out"):
        assert admin.delete(f"{MOVEMENTS}/{name}").status_code == 200
    assert admin.delete(f"{ALLOCATIONS}/m2").status_code == 200
    wait_gone(admin, f"{ALLOCATIONS}/m2")
