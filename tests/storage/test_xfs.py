"""The xfs driver on real loop devices: per-compute-node file systems, capacity, restore, clean-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from slurmlink.storage.filesystems import (
    Allocation,
    CapacityError,
    CommandError,
    MissingToolError,
    Mount,
    NodeRunner,
    StateError,
    StorageNode,
    XfsDriver,
    XfsOptions,
    static_runners,
)
from slurmlink.storage.filesystems.mounts import mounted_at
from support.netns import MountNamespaces
from support.storage import (
    JOB_GID,
    JOB_UID,
    MIB,
    as_job_user,
    host_mounts_below,
    loop_devices_below,
    write_file_argv,
)

pytestmark = pytest.mark.storage


def _driver(nodes: MountNamespaces, **options: object) -> XfsDriver:
    runners = {"s1": NodeRunner("s1"), **nodes.runners}
    return XfsDriver(static_runners(runners), XfsOptions(**options))  # type: ignore[arg-type]


def _allocation(name: str, mib: int = 64) -> Allocation:
    return Allocation(name, mib * MIB, JOB_UID, JOB_GID, 0o700)


def test_one_file_system_per_compute_node(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes)
    server = StorageNode("s1", str(work_dir / "pool"))
    c1, c2 = compute_nodes.runners["c1"], compute_nodes.runners["c2"]
    fs1 = driver.create(_allocation("job1-c1"), [server])
    fs2 = driver.create(_allocation("job1-c2"), [server])
    assert fs1.state == fs2.state == "ready"
    assert fs1.details["uuid"] != fs2.details["uuid"]
    m1 = Mount("c1", str(work_dir / "mnt" / "c1" / "scratch"))
    m2 = Mount("c2", str(work_dir / "mnt" / "c2" / "scratch"))
    driver.mount(fs1, m1)
    driver.mount(fs2, m2)
    driver.mount(fs1, m1)  # idempotent

    # Each compute node sees its own file system, the host and the other node do not.
    info = mounted_at(c1, m1.path)
    assert info is not None and info.fstype == "xfs"
    assert "nodev" in info.options and "nosuid" in info.options
    assert mounted_at(c2, m1.path) is None
    assert host_mounts_below(work_dir / "mnt") == []
    owner = c1.run(["stat", "-c", "%u %g %a", m1.path]).stdout.split()
    assert owner == [str(JOB_UID), str(JOB_GID), "700"]

    # The job user writes; nobody writes past the capacity.
    c1.run(as_job_user(write_file_argv(f"{m1.path}/small", 8)))
    assert c2.run(["test", "-e", f"{m1.path}/small"], check=False).returncode != 0
    full = c1.run(as_job_user(write_file_argv(f"{m1.path}/big", 80)), check=False)
    assert full.returncode != 0 and "No space left on device" in full.stderr
    usage = driver.usage(fs1, m1)
    assert usage.enforcement == "kernel"
    assert usage.size is not None and 56 * MIB < usage.size <= 64 * MIB
    assert usage.available is not None and usage.available < MIB
    assert not usage.over_capacity

    for fs, mount in ((fs1, m1), (fs2, m2)):
        driver.unmount(fs, mount)
        driver.unmount(fs, mount)  # idempotent
        driver.delete(fs)
        driver.delete(fs)  # idempotent
    assert loop_devices_below(work_dir) == {}
    assert list((work_dir / "pool").iterdir()) == []
    assert not Path(m1.path).exists() and not Path(m2.path).exists()


def test_restore_after_agent_restart_and_reboot(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    server = StorageNode("s1", str(work_dir / "pool"))
    mount = Mount("c1", str(work_dir / "mnt" / "scratch"))
    c1 = compute_nodes.runners["c1"]
    driver = _driver(compute_nodes)
    fs = driver.create(_allocation("persist"), [server])
    driver.mount(fs, mount)
    c1.run(as_job_user(["sh", "-c", f"echo kept > {mount.path}/data"]))
    del driver, fs

    # An agent restart: new objects, state from disk; everything is still in place.
    driver = _driver(compute_nodes)
    (fs,) = driver.discover(server)
    assert fs.name == "persist" and fs.state == "ready"
    driver.restore(fs, [mount])
    assert c1.run(["cat", f"{mount.path}/data"]).stdout == "kept\n"
    assert driver.create(_allocation("persist"), [server]) == fs  # create again: the same one

    # A node reboot: the mount and the loop device are gone; restore brings both back, unformatted.
    c1.run(["umount", mount.path])
    for device in loop_devices_below(work_dir):
        subprocess.run(["losetup", "--detach", device], check=True)
    with pytest.raises(StateError, match="restore it there first"):
        driver.mount(fs, mount)
    driver.restore(fs, [mount])
    assert c1.run(["cat", f"{mount.path}/data"]).stdout == "kept\n"
    assert len(loop_devices_below(work_dir)) == 1

    driver.unmount(fs, mount)
    driver.delete(fs)
    assert loop_devices_below(work_dir) == {}
    assert driver.discover(server) == []


def test_delete_refuses_while_mounted(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes)
    server = StorageNode("s1", str(work_dir / "pool"))
    fs = driver.create(_allocation("busy", 32), [server])
    mount = Mount("c2", str(work_dir / "mnt" / "busy"))
    driver.mount(fs, mount)
    with pytest.raises(StateError, match="still in use"):
        driver.delete(fs)
    driver.unmount(fs, mount)
    driver.delete(fs)
    assert loop_devices_below(work_dir) == {}
    assert list((work_dir / "pool").iterdir()) == []


def test_failed_creates_leave_nothing(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    pool = work_dir / "pool"
    server = StorageNode("s1", str(pool))

    # The pool's device is too small: refused before anything is attached.
    pool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(pool)], check=True)
    try:
        with pytest.raises(CapacityError, match="free space in the pool"):
            _driver(compute_nodes).create(_allocation("toolarge", 64), [server])
        assert list(pool.iterdir()) == []
    finally:
        subprocess.run(["umount", str(pool)], check=True)

    # mkfs.xfs fails half-way: the loop device is detached and the directory removed.
    bad = _driver(compute_nodes, mkfs_options=("-b", "size=3"))
    with pytest.raises(CommandError, match=r"mkfs\.xfs"):
        bad.create(_allocation("badmkfs", 32), [server])
    assert loop_devices_below(work_dir) == {}
    assert list(pool.iterdir()) == []

    # No mkfs.xfs on the node: said so, with the package to install.
    no_sbin = NodeRunner("s1", env={"PATH": "/usr/bin:/bin"})
    driver = XfsDriver(static_runners({"s1": no_sbin}))
    with pytest.raises(
        MissingToolError, match=r"mkfs\.xfs not found on node s1: install the Debian package xfsprogs"
    ):
        driver.create(_allocation("notools", 32), [server])
    assert list(pool.iterdir()) == []


def test_mount_point_through_a_link_is_refused(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes)
    server = StorageNode("s1", str(work_dir / "pool"))
    fs = driver.create(_allocation("linked", 32), [server])
    (work_dir / "elsewhere").mkdir()
    (work_dir / "link").symlink_to(work_dir / "elsewhere")
    with pytest.raises(StateError, match="symbolic link"):
        driver.mount(fs, Mount("c1", str(work_dir / "link" / "scratch")))
    assert mounted_at(compute_nodes.runners["c1"], str(work_dir / "elsewhere" / "scratch")) is None
    driver.delete(fs)
