"""The gluster driver on real glusterds: three storage nodes, each in its own network namespace.

One setup per module (bridge, namespaces, three glusterds); the tests use volumes over two of them and
two "compute nodes" (mount namespaces of their own, in the host's network namespace, which reaches
the storage nodes over the bridge).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from slurmlink.storage.filesystems import (
    Allocation,
    CommandError,
    FileSystem,
    Glusterd,
    GlusterDriver,
    GlusterOptions,
    Mount,
    NodeRunner,
    NotSupportedError,
    StateError,
    StorageNode,
    TransientError,
    static_runners,
)
from slurmlink.storage.filesystems.mounts import mounted_at
from support.netns import MountNamespaces, NetworkLab
from support.storage import (
    JOB_GID,
    JOB_UID,
    MIB,
    as_job_user,
    cleanup_below,
    loop_devices_below,
    world_searchable_dir,
    write_file_argv,
)
from support.waiting import wait_for

pytestmark = pytest.mark.storage


@dataclass
class GlusterLab:
    root: Path
    nodes: list[StorageNode]
    glusterds: list[Glusterd]
    runners: dict[str, NodeRunner]
    computes: MountNamespaces
    #: The host's address on the bridge: reachable, and no glusterd listens there.
    host_address: str

    def driver(self) -> GlusterDriver:
        return GlusterDriver(
            static_runners(self.runners), GlusterOptions(client_log_dir=str(self.root / "client-logs"))
        )


@pytest.fixture(scope="module")
def lab() -> Iterator[GlusterLab]:
    if shutil.which("glusterd") is None or shutil.which("glusterfs") is None:
        pytest.fail(
            "glusterd/glusterfs missing: run scripts/install-system-packages (glusterfs-server, -client)"
        )
    root = world_searchable_dir("slurmlink-gluster-")
    glusterds: list[Glusterd] = []
    try:
        with (
            NetworkLab(3) as net,
            MountNamespaces(root / "ns", ["c1", "c2", *(n.name for n in net.nodes)]) as namespaces,
        ):
            nodes = [
                StorageNode(
                    n.name, str(root / n.name / "pool"), address=n.address, state_dir=str(root / n.name)
                )
                for n in net.nodes
            ]
            # A storage node is a network namespace and a mount namespace of its own, as in the dev
            # cluster: its brick mounts stay inside it (never in the host's, whence they would propagate
            # into every other namespace that follows the host's mounts).
            runners = {
                n.name: NodeRunner(
                    n.name,
                    prefix=(
                        "nsenter",
                        f"--net=/run/netns/{n.netns}",
                        f"--mount={namespaces.pin(n.name)}",
                        "--",
                    ),
                )
                for n in net.nodes
            }
            runners |= {name: namespaces.runners[name] for name in ("c1", "c2")}
            glusterds.extend(Glusterd(node, runners[node.name]) for node in nodes)
            try:
                _each(glusterds, Glusterd.start)
                yield GlusterLab(root, nodes, glusterds, runners, namespaces, net.host_address)
            finally:
                _each(glusterds, Glusterd.stop)  # before their namespaces go: they run in them
                namespaces.close(below=root)
    finally:
        cleanup_below(root)
        shutil.rmtree(root, ignore_errors=True)


def _each(glusterds: list[Glusterd], action: Callable[[Glusterd], None]) -> None:
    """``action`` on every glusterd at once (each start waits a few seconds for glusterd to answer)."""
    with ThreadPoolExecutor(len(glusterds)) as pool:
        for future in [pool.submit(action, glusterd) for glusterd in glusterds]:
            future.result()


def _processes_naming(text: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", text], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _assert_nothing_left(lab: GlusterLab, fs: FileSystem) -> None:
    volume = fs.details["volume"]
    servers = {server.name for server in fs.servers}
    for glusterd in lab.glusterds:
        assert volume not in glusterd.volumes()
        assert not Path(glusterd.layout.work_dir, "vols", volume).exists()
        assert list(Path(glusterd.layout.log_dir, "bricks").glob("*")) == []
        run_dir = Path(glusterd.layout.volume_run_dir(volume))
        if glusterd.node.name in servers:
            assert not run_dir.exists()
        else:  # a pool member without bricks of it keeps an empty run directory until it prunes
            assert not run_dir.exists() or list(run_dir.iterdir()) == []
            glusterd.prune()
            assert not run_dir.exists()
    for server in fs.servers:
        assert list(Path(server.pool_dir).iterdir()) == []
    for paths in fs.details["sockets"].values():
        assert paths and not any(Path(p).exists() for p in paths)
    assert loop_devices_below(lab.root) == {}
    assert _processes_naming(f"volfile-id[ =]{volume}") == []


def test_shared_volume_over_two_storage_nodes(lab: GlusterLab) -> None:
    driver = lab.driver()
    st1, st2, _ = lab.nodes
    c1, c2 = lab.computes.runners["c1"], lab.computes.runners["c2"]
    fs = driver.create(Allocation("job7-scratch", 128 * MIB, JOB_UID, JOB_GID, 0o700), [st1, st2])
    assert fs.state == "ready" and fs.details["brickSize"] == 64 * MIB
    path = str(lab.root / "bb" / "job7")
    mounts = [Mount("c1", path), Mount("c2", path)]
    for mount in mounts:
        driver.mount(fs, mount)
        driver.mount(fs, mount)  # idempotent
    info = mounted_at(c1, path)
    assert info is not None and info.fstype == "fuse.glusterfs"
    assert "nosuid" in info.options.split(",") and "nodev" in info.options.split(",")
    assert c2.run(["stat", "-c", "%u %g %a", path]).stdout.split() == [str(JOB_UID), str(JOB_GID), "700"]

    # Written through one compute node, seen through the other, spread over both bricks.
    names = [f"f{i}" for i in range(12)]
    for name in names:
        c1.run(as_job_user(["sh", "-c", f"echo {name} > {path}/{name}"]))
    assert sorted(c2.run(["ls", path]).stdout.split()) == sorted(names)
    assert c2.run(["cat", f"{path}/f7"]).stdout == "f7\n"
    per_brick = [  # bricks are mounted inside their storage node: look there
        set(lab.runners[brick["node"]].run(["ls", brick["path"]]).stdout.split())
        for brick in fs.details["bricks"]
    ]
    assert all(per_brick) and set.union(*per_brick) == set(names)
    assert [brick["node"] for brick in fs.details["bricks"]] == ["st1", "st2"]

    # Capacity is the bricks': a file larger than a brick does not fit.
    full = c1.run(as_job_user(write_file_argv(f"{path}/big", 80)), check=False)
    assert full.returncode != 0 and "No space left on device" in full.stderr
    c1.run(["rm", "-f", f"{path}/big"])
    usage = driver.usage(fs, mounts[0])
    assert usage.size is not None and 110 * MIB < usage.size <= 128 * MIB

    # A node without FUSE is told so (a namespace whose /dev lacks it).
    with MountNamespaces(lab.root / "ns-nofuse", ["c3"]) as nofuse:
        c3 = nofuse.runners["c3"]
        c3.run(["mount", "-t", "tmpfs", "-o", "size=1m", "nodev-here", "/dev"])
        driver = GlusterDriver(static_runners({**lab.runners, "c3": c3}))
        with pytest.raises(NotSupportedError, match="no /dev/fuse"):
            driver.mount(fs, Mount("c3", str(lab.root / "bb" / "nofuse")))

    for mount in mounts:
        driver.unmount(fs, mount)
        driver.unmount(fs, mount)  # idempotent
    driver.delete(fs)
    driver.delete(fs)  # idempotent
    _assert_nothing_left(lab, fs)
    assert not Path(path).exists()


def test_restore_after_glusterd_restart(lab: GlusterLab) -> None:
    st1, _, st3 = lab.nodes
    c2 = lab.computes.runners["c2"]
    driver = lab.driver()
    fs = driver.create(Allocation("persistent-a", 64 * MIB, JOB_UID, JOB_GID, 0o750), [st3, st1])
    mount = Mount("c2", str(lab.root / "bb" / "persistent-a"))
    driver.mount(fs, mount)
    c2.run(as_job_user(["sh", "-c", f"for i in 1 2 3 4 5 6; do echo $i > {mount.path}/k$i; done"]))
    del driver, fs

    # Storage nodes restart: glusterd and the bricks go away, and come back with glusterd.
    _each(lab.glusterds, Glusterd.stop)
    assert _processes_naming("volfile-id persistent-a") == []
    _each(lab.glusterds, Glusterd.start)

    driver = lab.driver()
    (fs,) = driver.discover(st3)
    assert fs.name == "persistent-a"
    try:
        driver.restore(fs, [mount])
        assert c2.run(["cat", f"{mount.path}/k4"]).stdout == "4\n"
        assert sorted(c2.run(["ls", mount.path]).stdout.split()) == [f"k{i}" for i in range(1, 7)]
    finally:  # also when restoring failed: the module's later tests start from empty pools
        driver.unmount(fs, mount)
        driver.delete(fs)
    _assert_nothing_left(lab, fs)


def test_mount_names_unreachable_bricks_and_start_volume_restarts_them(lab: GlusterLab) -> None:
    st1, st2, _ = lab.nodes
    options = GlusterOptions(client_log_dir=str(lab.root / "client-logs"), mount_timeout=5)
    driver = GlusterDriver(static_runners(lab.runners), options)
    fs = driver.create(Allocation("half-down", 64 * MIB, JOB_UID, JOB_GID, 0o700), [st1, st2])
    volume = fs.details["volume"]
    mount = Mount("c1", str(lab.root / "bb" / "half-down"))
    try:
        # st2's brick process dies; glusterd does not restart it by itself.
        ((brick_pid, _),) = lab.glusterds[1].daemon_pids(volume)
        os.kill(brick_pid, signal.SIGKILL)
        wait_for(lambda: not lab.glusterds[1].daemon_pids(volume), message="st2's brick process to exit")
        with pytest.raises(
            StateError, match=rf"not connected to bricks {re.escape(st2.address or '')}:"
        ) as refused:
            driver.mount(fs, mount)
        # The client's own complaint is quoted from its log.
        assert "its last errors:" in str(refused.value) and "failed to get the port number" in str(
            refused.value
        )
        assert mounted_at(lab.computes.runners["c1"], mount.path) is None

        driver.start_volume(st1, volume)
        assert len(lab.glusterds[1].daemon_pids(volume)) == 1
        driver.mount(fs, mount)
        c1 = lab.computes.runners["c1"]
        c1.run(as_job_user(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8; do echo $i > {mount.path}/f$i; done"]))
        assert sorted(c1.run(["ls", mount.path]).stdout.split()) == [f"f{i}" for i in range(1, 9)]
    finally:
        driver.unmount(fs, mount)
        driver.delete(fs)
    _assert_nothing_left(lab, fs)


def test_failed_create_rolls_back(lab: GlusterLab) -> None:
    st1, st2, st3 = lab.nodes
    driver = lab.driver()
    allocation = Allocation("doomed", 64 * MIB, JOB_UID, JOB_GID)

    # A storage node without glusterd at its address: its brick is made, the probe fails, all is undone.
    unreachable = replace(st3, address=lab.host_address)
    with pytest.raises(CommandError, match="peer probe"):
        driver.create(allocation, [st1, unreachable])
    for node in (st1, st3):
        assert list(Path(node.pool_dir).iterdir()) == []
    assert loop_devices_below(lab.root) == {}
    assert "doomed" not in lab.glusterds[0].volumes()

    # A storage node whose glusterd is down: refused before anything is made, saying which, as a
    # condition its agent clears (it starts glusterd), not as a failure of the buffer.
    lab.glusterds[1].stop()
    try:
        with pytest.raises(TransientError, match="glusterd is not running on storage node st2"):
            driver.create(allocation, [st1, st2])
        assert list(Path(st1.pool_dir).iterdir()) == []
    finally:
        lab.glusterds[1].start()


def test_a_glusterd_that_runs_but_does_not_answer_is_given_time(lab: GlusterLab) -> None:
    st1, st2, _ = lab.nodes
    glusterd = lab.glusterds[1]
    socket, away = glusterd.layout.socket, glusterd.layout.socket + ".away"
    runner = lab.runners["st2"]
    options = GlusterOptions(client_log_dir=str(lab.root / "client-logs"), answer_timeout=1)
    impatient = GlusterDriver(static_runners(lab.runners), options)
    allocation = Allocation("unanswered", 64 * MIB, JOB_UID, JOB_GID)

    # glusterd runs, but its CLI socket is not where the CLI looks: refused after answer_timeout,
    # quoting the CLI, before anything is made.
    runner.run(["mv", socket, away])
    try:
        assert glusterd.pid() is not None and not glusterd.healthy()
        with pytest.raises(TransientError, match="glusterd does not answer on storage node st2") as refused:
            impatient.create(allocation, [st1, st2])
        assert "the gluster CLI said:" in str(refused.value)
        assert list(Path(st1.pool_dir).iterdir()) == []

        # It answers again while the driver waits: the volume is made.
        answers = threading.Timer(1.0, lambda: runner.run(["mv", away, socket]))
        answers.start()
        fs = lab.driver().create(allocation, [st1, st2])
        answers.join()
    finally:
        if not Path(socket).exists() and Path(away).exists():
            runner.run(["mv", away, socket])
    assert fs.state == "ready"
    lab.driver().delete(fs)
    _assert_nothing_left(lab, fs)
