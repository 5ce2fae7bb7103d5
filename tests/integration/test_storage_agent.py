"""The storage node agent against a real server: registration, restarts, drains, heartbeats, pools.

Agents run as real ``slurmlink agent`` processes with their own node-agent kubeconfigs; the server's
storage-heartbeat controller has a 3 s timeout here (``--node-heartbeat-timeout 3``). A loop-file
agent runs in a private mount namespace of its own (``unshare --mount``), as it would inside a node,
so its pool mount never appears on the host; its loop device (global, like a disk) is detached at the
end. The dev cluster is not needed: the quick start test runs agents inside real nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.agent.device import FORMAT_MARKER, release_loop_file
from slurmlink.auth.kubeconfig import load_kubeconfig
from support.agents import (
    POOLS,
    STORAGES,
    AgentProcess,
    lease,
    loop_devices,
    storage,
    wait_storage,
)
from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.waiting import wait_for

G = "dataworkflowservices.github.io"
MERGE = {"Content-Type": "application/merge-patch+json"}
TIMEOUT = 3.0  # the server's --node-heartbeat-timeout
GiB = 1024**3
MiB = 1024**2

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("serve") / "state", extra_args=("--node-heartbeat-timeout", str(TIMEOUT))
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents a test started; stopped (SIGTERM) at its end."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def kubeconfig(server: ServerProcess, node: str) -> Path:
    return server.issue_kubeconfig(None, "node-agent", node=node)


def directory_agent(
    server: ServerProcess, workdir: Path, node: str, *extra: str, run: int = 0
) -> AgentProcess:
    pool = workdir / f"{node}-dir"
    pool.mkdir(exist_ok=True)
    args = [
        *("--directory", str(pool), "--state-dir", str(workdir / f"{node}-state")),
        *("--heartbeat-interval", "0.3"),
        *extra,
    ]
    return AgentProcess(node, kubeconfig(server, node), args, workdir / f"{node}-{run}.log")


def test_a_directory_agent_registers_its_storage(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess], kubectl_132: Path
) -> None:
    agent = directory_agent(server, workdir, "dir1").start()
    agents.append(agent)
    obj = wait_storage(admin, "dir1", "Ready")
    pool = workdir / "dir1-dir"
    st = os.statvfs(pool)
    assert obj["status"]["capacity"] == st.f_blocks * st.f_frsize  # the directory's file system
    assert obj["status"]["devices"] == [
        {"model": "directory", "slot": str(pool), "capacity": st.f_blocks * st.f_frsize, "status": "Ready"}
    ]
    assert obj["spec"] == {"state": "Enabled", "mode": "Live"}
    m = obj["metadata"]
    assert m["labels"] == {f"{G}/storage": "slurmlink"}
    assert m["annotations"] == {"slurmlink.io/address": "127.0.0.1", "slurmlink.io/pool-dir": str(pool)}
    beat = lease(admin, "dir1")
    assert beat is not None and beat["spec"]["holderIdentity"] == "dir1"
    # The heartbeat goes on: the Lease is renewed.
    wait_for(
        lambda: (lease(admin, "dir1") or {}).get("spec", {}).get("renewTime") != beat["spec"]["renewTime"],
        5,
        message="a renewal of the Lease",
    )
    r = run_kubectl(kubectl_132, server.kubeconfig, "get", "storages", "-A")
    assert r.returncode == 0, r.stderr
    row = next(line.split() for line in r.stdout.splitlines() if " dir1 " in f" {line} ")
    assert row[:5] == ["default", "dir1", "Enabled", "Ready", "Live"]


def test_declared_capacity_and_a_restart_keep_the_same_storage(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    agent = directory_agent(server, workdir, "dir2", "--capacity", "100TiB").start()
    agents.append(agent)
    obj = wait_storage(admin, "dir2", "Ready")
    assert obj["status"]["capacity"] == 100 * 1024**4  # more than the disk: a dir pool for big tests
    agent.kill9()
    again = directory_agent(server, workdir, "dir2", "--capacity", "200TiB", run=1).start()
    agents.append(again)
    wait_for(
        lambda: (storage(admin, "dir2") or {}).get("status", {}).get("capacity") == 200 * 1024**4,
        20,
        message="the new capacity",
    )
    assert storage(admin, "dir2")["metadata"]["uid"] == obj["metadata"]["uid"]  # type: ignore[index]


def test_a_loop_file_is_created_formatted_and_reattached_after_kill_9(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    image = workdir / "loop1.img"
    state = workdir / "loop1-state"
    args = [
        *("--loop-file", str(image), "--size", "512MiB", "--state-dir", str(state)),
        *("--heartbeat-interval", "0.3"),
    ]
    # Its own mount namespace, as inside a node: the pool mount stays there (private: none leaks out).
    prefix = ["unshare", "--mount", "--propagation", "private", "--"]
    config = kubeconfig(server, "loop1")
    try:
        first = AgentProcess("loop1", config, args, workdir / "loop1-0.log", prefix).start()
        agents.append(first)
        obj = wait_storage(admin, "loop1", "Ready", timeout=60)
        devices = loop_devices(image)
        assert len(devices) == 1, devices
        assert image.stat().st_size == 512 * MiB
        assert image.stat().st_blocks * 512 < 512 * MiB  # sparse
        [device] = obj["status"]["devices"]
        assert device == {
            "model": "loop device",
            "serialNumber": str(image),
            "slot": devices[0],
            "capacity": 512 * MiB,
            "status": "Ready",
        }
        # The pool is XFS on the loop device: its size less what XFS keeps for its log.
        assert 400 * MiB < obj["status"]["capacity"] < 512 * MiB
        assert obj["metadata"]["annotations"]["slurmlink.io/pool-dir"] == str(state / "pool")
        first.wait_log("formatting")
        inode = image.stat().st_ino

        first.kill9()
        renewed = (lease(admin, "loop1") or {})["spec"]["renewTime"]
        second = AgentProcess("loop1", config, args, workdir / "loop1-1.log", prefix).start()
        agents.append(second)
        second.wait_log("ready, capacity", timeout=60)
        wait_for(
            lambda: (lease(admin, "loop1") or {})["spec"]["renewTime"] != renewed,
            20,
            message="the restarted agent's heartbeat",
        )
        assert loop_devices(image) == devices  # the same loop device, and no second one
        assert image.stat().st_ino == inode  # the same file
        assert "attached" not in second.text() and "formatting" not in second.text()
        after = wait_storage(admin, "loop1", "Ready")
        assert after["metadata"]["uid"] == obj["metadata"]["uid"]
        assert after["status"]["capacity"] == obj["status"]["capacity"]
        second.stop()

        # kill -9 during mkfs.xfs: the marker written before it is still there; the next start formats
        # again (a partial file system is never trusted), on the same loop device.
        (state / FORMAT_MARKER).write_text(json.dumps({"device": f"loop:{image}"}) + "\n")
        third = AgentProcess("loop1", config, args, workdir / "loop1-2.log", prefix).start()
        agents.append(third)
        third.wait_log("ready, capacity", timeout=60)
        assert "formatting" in third.text() and "again (interrupted)" in third.text()
        assert not (state / FORMAT_MARKER).exists()
        assert loop_devices(image) == devices
        third.stop()
    finally:
        for agent in agents:
            agent.stop()
        release_loop_file(image)
    assert loop_devices(image) == []


def test_a_loop_file_attached_before_a_crash_is_reused(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    """kill -9 between losetup and the mount: the next start finds the device attached and uses it."""
    image = workdir / "loop2.img"
    with open(image, "wb") as out:
        out.truncate(400 * MiB)
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        args = ["--loop-file", str(image), "--state-dir", str(workdir / "loop2-state")]
        prefix = ["unshare", "--mount", "--propagation", "private", "--"]
        agent = AgentProcess("loop2", kubeconfig(server, "loop2"), args, workdir / "loop2.log", prefix)
        agents.append(agent.start())
        obj = wait_storage(admin, "loop2", "Ready", timeout=60)
        assert obj["status"]["devices"][0]["slot"] == attached
        assert loop_devices(image) == [attached]
        assert "attached" not in agent.text() and "created loop file" not in agent.text()
        agent.stop()
    finally:
        release_loop_file(image)


def test_an_admins_drain_survives_agent_restarts(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    agent = directory_agent(server, workdir, "dir3").start()
    agents.append(agent)
    wait_storage(admin, "dir3", "Ready")
    r = admin.patch(f"{STORAGES}/dir3", json={"spec": {"state": "Disabled"}}, headers=MERGE)
    assert r.status_code == 200, r.text
    obj = wait_storage(admin, "dir3", "Disabled")
    assert obj["status"]["message"] == "Storage node manually disabled"
    agent.kill9()
    renewed = (lease(admin, "dir3") or {})["spec"]["renewTime"]
    again = directory_agent(server, workdir, "dir3", run=1).start()
    agents.append(again)
    wait_for(
        lambda: (lease(admin, "dir3") or {})["spec"]["renewTime"] != renewed,
        20,
        message="the restarted agent's heartbeat",
    )
    # It registered again (its first status write comes right after the heartbeat) and kept the spec.
    again.wait_log("agent for node dir3")
    obj = wait_storage(admin, "dir3", "Disabled")
    assert obj["spec"]["state"] == "Disabled"
    admin.patch(f"{STORAGES}/dir3", json={"spec": {"state": "Enabled"}}, headers=MERGE)
    wait_storage(admin, "dir3", "Ready")


def test_a_node_agent_credential_reaches_only_its_own_node(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess], kubectl_132: Path
) -> None:
    agents.append(directory_agent(server, workdir, "dir4").start())
    agents.append(directory_agent(server, workdir, "dir5").start())
    wait_storage(admin, "dir4", "Ready")
    wait_storage(admin, "dir5", "Ready")
    own = kubeconfig(server, "dir4")
    user = "system:node:dir4"
    for args, verb, resource, namespace, name in [
        (["patch", "storage", "dir5", "--type=merge", "-p", '{"spec":{"state":"Disabled"}}'], "patch",
         "storages", "default", "dir5"),
        (["patch", "storage", "dir5", "--subresource=status", "--type=merge", "-p",
          '{"status":{"status":"Failed"}}'], "patch", "storages", "default", "dir5"),
        (["delete", "storage", "dir4"], "delete", "storages", "default", "dir4"),
        (["get", "lease", "-n", "slurmlink-node-lease", "dir5"], "get", "leases", "slurmlink-node-lease",
         "dir5"),
    ]:  # fmt: skip
        r = run_kubectl(kubectl_132, own, "-n", "default", *args)
        assert r.returncode != 0, r.stdout
        group = "coordination.k8s.io" if resource == "leases" else G
        expected = (
            f'{resource}.{group} "{name}" is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" in the namespace "{namespace}"'
        )
        assert expected in r.stderr, r.stderr
    r = run_kubectl(kubectl_132, own, "get", "storages", "-n", "default", "dir5")  # reading is fine
    assert r.returncode == 0, r.stderr
    assert storage(admin, "dir5")["spec"]["state"] == "Enabled"  # type: ignore[index]

    # An agent started for another node with this credential is refused and says why.
    pool = workdir / "dir4-dir"
    wrong = AgentProcess(
        "dir5", own, ["--directory", str(pool), "--state-dir", str(workdir / "wrong")], workdir / "wrong.log"
    ).start()
    agents.append(wrong)
    assert wrong.wait_exit(60) == 1
    assert "the API refused node dir5's agent" in wrong.text(), wrong.text()
    assert 'User \\"system:node:dir4\\"' in wrong.text() or 'User "system:node:dir4"' in wrong.text()


def pool_status(admin: httpx.Client, name: str) -> dict[str, Any]:
    r = admin.get(f"{POOLS}/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json().get("status") or {})


def test_a_killed_agent_goes_offline_and_the_pool_shrinks_until_it_is_back(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    a = directory_agent(server, workdir, "hb1", "--capacity", "4GiB").start()
    b = directory_agent(server, workdir, "hb2", "--capacity", "4GiB").start()
    agents += [a, b]
    wait_storage(admin, "hb1", "Ready")
    wait_storage(admin, "hb2", "Ready")
    body = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StoragePool",
        "metadata": {"name": "hb"},
        "spec": {"fileSystemTypes": ["dir"], "nodes": ["hb1", "hb2"]},
    }
    assert admin.post(POOLS, json=body).status_code == 201
    wait_for(lambda: pool_status(admin, "hb").get("freeBytes") == 8 * GiB, 10, message="pool free 8GiB")
    assert pool_status(admin, "hb")["totalBytes"] == 8 * GiB

    b.kill9()
    killed = time.monotonic()
    obj = wait_storage(admin, "hb2", "Offline", timeout=TIMEOUT + 10)
    took = time.monotonic() - killed
    assert TIMEOUT - 0.5 < took < TIMEOUT + 3, took  # after the timeout, and soon after it
    assert obj["status"]["message"].startswith("no heartbeat from the node agent for 3 s")
    wait_for(lambda: pool_status(admin, "hb").get("freeBytes") == 4 * GiB, 10, message="pool free 4GiB")
    status = pool_status(admin, "hb")
    assert status["totalBytes"] == 8 * GiB  # still a member, just not usable
    assert {n["name"]: n["status"] for n in status["nodes"]} == {"hb1": "Ready", "hb2": "Offline"}
    assert status["conditions"][0]["status"] == "True" and "1 of 2" in status["conditions"][0]["message"]
    assert a.running()  # the other node's heartbeat kept it Ready
    assert storage(admin, "hb1")["status"]["status"] == "Ready"  # type: ignore[index]

    back = directory_agent(server, workdir, "hb2", "--capacity", "4GiB", run=1).start()
    agents.append(back)
    wait_storage(admin, "hb2", "Ready", timeout=20)
    wait_for(lambda: pool_status(admin, "hb").get("freeBytes") == 8 * GiB, 10, message="pool free again")
    assert "message" not in storage(admin, "hb2")["status"]  # type: ignore[index]


def slurmlink(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", *args, "--kubeconfig", str(server.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_drain_and_undrain_round_trip(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess], kubectl_132: Path
) -> None:
    agents.append(directory_agent(server, workdir, "dr1", "--capacity", "2GiB").start())
    wait_storage(admin, "dr1", "Ready")
    body = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StoragePool",
        "metadata": {"name": "drains"},
        "spec": {"fileSystemTypes": ["raw"], "nodeSelector": {"matchLabels": {f"{G}/storage": "slurmlink"}},
                 "granularity": "1GiB"},
    }  # fmt: skip
    assert admin.post(POOLS, json=body).status_code == 201

    def free_on_dr1() -> int | None:
        nodes = {n["name"]: n for n in pool_status(admin, "drains").get("nodes") or []}
        return nodes["dr1"]["freeGranules"] if "dr1" in nodes else None

    wait_for(lambda: free_on_dr1() == 2, 10, message="dr1 in the pool with 2 granules free")

    r = slurmlink(server, "storage", "drain", "dr1", "--reason", "disk swap")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("storage/dr1 drained: spec.state Enabled -> Disabled"), r.stdout
    obj = wait_storage(admin, "dr1", "Disabled")
    assert obj["status"]["message"] == "Storage node manually disabled: disk swap"
    assert obj["metadata"]["annotations"]["slurmlink.io/drain-reason"] == "disk swap"
    wait_for(lambda: free_on_dr1() == 0, 10, message="no free granules on a drained node")
    r = run_kubectl(kubectl_132, server.kubeconfig, "get", "storages", "-A")
    row = next(line.split() for line in r.stdout.splitlines() if " dr1 " in f" {line} ")
    assert row[:4] == ["default", "dr1", "Disabled", "Disabled"], r.stdout
    r = slurmlink(server, "storage", "drain", "dr1")
    assert r.returncode == 0 and "already Disabled" in r.stdout, r.stdout + r.stderr
    listed = slurmlink(server, "storage", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("dr1 "))
    assert line.split()[:5] == ["dr1", "Disabled", "Disabled", "2GiB", "127.0.0.1"], line
    assert "ago" in line and "disk swap" in line

    r = slurmlink(server, "storage", "undrain", "dr1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("storage/dr1 undrained: spec.state Disabled -> Enabled"), r.stdout
    obj = wait_storage(admin, "dr1", "Ready")
    assert "slurmlink.io/drain-reason" not in obj["metadata"]["annotations"]
    wait_for(lambda: free_on_dr1() == 2, 10, message="granules free again")
    r = run_kubectl(kubectl_132, server.kubeconfig, "get", "storagepools")
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("drains "))
    assert row[1:3] == ["raw", "1GiB"], r.stdout

    r = slurmlink(server, "storage", "drain", "no-such-node")
    assert r.returncode == 1
    assert 'error: no storage node "no-such-node"' in r.stderr and "dr1" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--directory", "/nonexistent/pool"], "directory /nonexistent/pool does not exist"),
        (["--device", "/dev/nonexistent-disk"], "device /dev/nonexistent-disk does not exist"),
        (["--device", "/etc/hostname"], "/etc/hostname is not a block device"),
        (["--loop-file", "/nonexistent/x.img"], "loop file /nonexistent/x.img does not exist: give --size"),
        ([], "give one of --device, --directory or --loop-file"),
        (["--compute", "--directory", "/x", "--size", "1GiB"], "--directory, --size: not for --compute"),
    ],
)
def test_an_unusable_device_is_refused_with_the_reason(
    server: ServerProcess, workdir: Path, args: list[str], message: str
) -> None:
    agent = AgentProcess(
        "bad", kubeconfig(server, "bad"), [*args, "--state-dir", str(workdir / "bad")], workdir / "bad.log"
    )
    agent.log.unlink(missing_ok=True)
    agent.start()
    assert agent.wait_exit(60) != 0
    assert message in agent.text(), agent.text()


class Relay:
    """A TCP relay from a local port to the server, started when the test wants the API reachable."""

    def __init__(self, listen: socket.socket, target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> None:
        self.listen.listen()
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listen.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listen.close()


def test_an_unreachable_api_is_retried_and_logged(
    server: ServerProcess, admin: httpx.Client, workdir: Path, agents: list[AgentProcess]
) -> None:
    """A server that is not there yet: the agent says so and keeps trying; once it answers, it registers."""
    config = kubeconfig(server, "far1")
    text = config.read_text()
    listen = socket.socket()
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = listen.getsockname()[1]
    relay = Relay(listen, ("127.0.0.1", server.port))
    far = workdir / "far1.kubeconfig"
    far.write_text(text.replace(server.url, f"https://127.0.0.1:{port}"))
    pool = workdir / "far1-dir"
    pool.mkdir()
    agent = AgentProcess(
        "far1",
        far,
        ["--directory", str(pool), "--state-dir", str(workdir / "far1-state")],
        workdir / "far1.log",
    ).start()
    agents.append(agent)
    try:
        agent.wait_log(f"cannot reach the slurmlink API at https://127.0.0.1:{port}: connection refused")
        agent.wait_log("retrying with back-off")
        assert agent.running() and storage(admin, "far1") is None
        relay.start()
        wait_storage(admin, "far1", "Ready", timeout=30)  # within the back-off's 10 s cap
        agent.wait_log(f"the slurmlink API at https://127.0.0.1:{port} is reachable again")
    finally:
        agent.stop()
        relay.close()


def test_serve_also_listens_where_the_nodes_reach_it(tmp_path: Path) -> None:
    """``serve --extra-listen``: a second address (the quick start's bridge), in the certificate too."""
    import ssl

    from support.postgres import free_port

    port = free_port()
    extra = ServerProcess(tmp_path / "state", port=port, extra_args=("--extra-listen", f"127.0.0.2:{port}"))
    with extra:
        ctx = ssl.create_default_context(cafile=str(extra.ca_file))
        for host in ("127.0.0.1", "127.0.0.2"):
            r = httpx.get(f"https://{host}:{port}/readyz", verify=ctx, timeout=10)  # verified: SAN
            assert r.status_code == 200, (host, r.text)
        assert load_kubeconfig(extra.kubeconfig).server == f"https://127.0.0.1:{port}"
