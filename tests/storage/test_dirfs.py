"""The dir driver: bind-mounted directories, capacity by accounting (or an XFS project quota)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.storage.filesystems import (
    Allocation,
    DirDriver,
    DirOptions,
    Mount,
    NodeRunner,
    RawDriver,
    StateError,
    StorageNode,
    static_runners,
)
from slurmlink.storage.filesystems.loop import XFS_SMALL_LIMIT
from slurmlink.storage.filesystems.mounts import mounted_at
from support.netns import MountNamespaces
from support.storage import JOB_GID, JOB_UID, MIB, as_job_user, host_mounts_below, write_file_argv

pytestmark = pytest.mark.storage


def _driver(nodes: MountNamespaces, cls: type[DirDriver] = DirDriver, **options: str) -> DirDriver:
    return cls(static_runners({"s1": NodeRunner("s1"), **nodes.runners}), DirOptions(**options))


def test_capacity_by_accounting(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes)
    server = StorageNode("s1", str(work_dir / "pool"))
    c1 = compute_nodes.runners["c1"]
    fs = driver.create(Allocation("small", 2 * MIB, JOB_UID, JOB_GID, 0o700), [server])
    assert fs.details["quota"] is None
    mount = Mount("c1", str(work_dir / "mnt" / "small"))
    driver.mount(fs, mount)
    driver.mount(fs, mount)  # idempotent
    info = mounted_at(c1, mount.path)
    assert info is not None and "nosuid" in info.options and "nodev" in info.options
    assert mounted_at(compute_nodes.runners["c2"], mount.path) is None
    assert c1.run(["stat", "-c", "%u %g %a", mount.path]).stdout.split() == [
        str(JOB_UID),
        str(JOB_GID),
        "700",
    ]

    c1.run(as_job_user(write_file_argv(f"{mount.path}/within", 1)))
    usage = driver.usage(fs, mount)
    assert usage.enforcement == "accounting"
    assert MIB <= usage.used < 2 * MIB and not usage.over_capacity  # type: ignore[operator]

    # Nothing stops the write; the accounting sees it, from the compute node and from the storage node.
    c1.run(as_job_user(write_file_argv(f"{mount.path}/beyond", 3)))
    for usage in (driver.usage(fs, mount), driver.usage(fs)):
        assert usage.over_capacity and usage.used >= 4 * MIB and usage.available == 0  # type: ignore[operator]

    driver.unmount(fs, mount)
    driver.unmount(fs, mount)
    driver.delete(fs)
    driver.delete(fs)
    assert list((work_dir / "pool").iterdir()) == []
    assert not Path(mount.path).exists()


def test_restore_and_raw_type(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    server = StorageNode("s1", str(work_dir / "pool"))
    driver = _driver(compute_nodes, RawDriver)
    fs = driver.create(Allocation("rawbuf", MIB, JOB_UID, JOB_GID, 0o750), [server])
    assert fs.type == "raw"
    mount = Mount("c2", str(work_dir / "mnt" / "raw"))
    driver.mount(fs, mount)
    c2 = compute_nodes.runners["c2"]
    c2.run(as_job_user(["sh", "-c", f"echo kept > {mount.path}/f"]))
    c2.run(["umount", mount.path])  # the compute node restarted

    fresh = _driver(compute_nodes, RawDriver)
    assert _driver(compute_nodes).discover(server) == []  # a dir driver does not claim raw buffers
    (found,) = fresh.discover(server)
    fresh.restore(found, [mount])
    assert c2.run(["cat", f"{mount.path}/f"]).stdout == "kept\n"
    assert c2.run(["stat", "-c", "%a", mount.path]).stdout.strip() == "750"
    fresh.unmount(found, mount)
    fresh.delete(found)
    assert list((work_dir / "pool").iterdir()) == []


def test_quota_required_but_unavailable(work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes, quota="require")
    server = StorageNode("s1", str(work_dir / "pool"))
    with pytest.raises(StateError, match="without project quotas"):
        driver.create(Allocation("needsquota", MIB, JOB_UID, JOB_GID), [server])
    assert list((work_dir / "pool").iterdir()) == []


@pytest.fixture
def xfs_quota_pool(work_dir: Path) -> Iterator[Path]:
    """A pool on a small XFS mounted with project quotas; skips where the kernel has no XFS quota."""
    image, pool = work_dir / "pool.img", work_dir / "pool"
    pool.mkdir()
    subprocess.run(["truncate", "--size", str(64 * MIB), str(image)], check=True)
    env_args = ["env", "TEST_DIR=/nonexistent", "TEST_DEV=/nonexistent", "QA_CHECK_FS=1"]
    assert 64 * MIB < XFS_SMALL_LIMIT
    subprocess.run([*env_args, "mkfs.xfs", "-q", str(image)], check=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop,prjquota", str(image), str(pool)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"this kernel cannot mount XFS with project quotas (CONFIG_XFS_QUOTA): {mounted.stderr}")
    try:
        yield pool
    finally:
        for target in reversed(host_mounts_below(work_dir)):
            subprocess.run(["umount", target], check=False)


def test_xfs_project_quota(xfs_quota_pool: Path, work_dir: Path, compute_nodes: MountNamespaces) -> None:
    driver = _driver(compute_nodes, quota="require")
    server = StorageNode("s1", str(xfs_quota_pool))
    fs = driver.create(Allocation("quoted", 4 * MIB, JOB_UID, JOB_GID), [server])
    assert fs.details["quota"]["project"] > 0
    mount = Mount("c1", str(work_dir / "mnt" / "quoted"))
    driver.mount(fs, mount)
    c1 = compute_nodes.runners["c1"]
    full = c1.run(as_job_user(write_file_argv(f"{mount.path}/big", 8)), check=False)
    assert full.returncode != 0 and "No space left on device" in full.stderr
    assert driver.usage(fs, mount).enforcement == "kernel"
    driver.unmount(fs, mount)
    driver.delete(fs)
    assert list(xfs_quota_pool.iterdir()) == []
