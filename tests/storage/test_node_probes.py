"""What an agent reads of its own node in-process gives what ``blkid`` and ``findmnt`` give.

An agent's runner for its own node reads an XFS UUID from the superblock and mounts from its mount
table instead of starting a program for each. Every case here asks both ways, on a
real loop device carrying a real XFS, mounted and bind-mounted.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from slurmlink.storage.filesystems import loop, mounts
from slurmlink.storage.filesystems.runner import NodeRunner

pytestmark = pytest.mark.storage

IN_PROCESS = NodeRunner("here")
PROGRAMS = NodeRunner("here", prefix=("env",))
UUID = "3f2c1a7e-9b0d-4c55-8e21-5d6f7a8b9c0d"


class NoPrograms(NodeRunner):
    def run(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise AssertionError(f"ran {args!r}")


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def _both(probe, *args):  # type: ignore[no-untyped-def]
    """``probe`` asked in-process and by the programs: the same answer, returned."""
    here, there = probe(IN_PROCESS, *args), probe(PROGRAMS, *args)
    if isinstance(here, mounts.MountInfo) and isinstance(there, mounts.MountInfo):
        assert (here.target, here.source, here.fstype) == (there.target, there.source, there.fstype)
        assert set(here.options.split(",")) == set(there.options.split(","))
    else:
        assert here == there
    return here


def test_loop_devices_uuids_and_mounts_read_in_process(work_dir: Path) -> None:
    image, other = work_dir / "a.img", work_dir / "b.img"
    assert _both(loop.loop_devices, str(image)) == []  # no such file
    for path in (image, other):
        _run("truncate", "--size", "64M", str(path))
    device = _run("losetup", "--find", "--show", str(image))
    blank = _run("losetup", "--find", "--show", str(other))
    mnt, bind = work_dir / "mnt", work_dir / "bind"
    try:
        assert _both(loop.loop_devices, str(image)) == [device]
        assert _both(loop.fs_uuid, blank) is None  # no file system at all
        loop.mkfs(PROGRAMS, device, 64 << 20, UUID, "probe", ())
        assert _both(loop.fs_uuid, device) == UUID
        assert _both(mounts.mounted_at, str(mnt)) is None
        mnt.mkdir()
        bind.mkdir()
        _run("mount", "-t", "xfs", "-o", "nodev,nosuid", device, str(mnt))
        (mnt / "sub").mkdir()
        _run("mount", "--bind", str(mnt / "sub"), str(bind))
        top = _both(mounts.mounted_at, str(mnt))
        assert (top.source, top.fstype) == (device, "xfs") and "nodev" in top.options.split(",")
        assert _both(mounts.mounted_at, str(bind)).source == f"{device}[/sub]"
        assert sorted(_both(mounts.mount_sources, device)) == sorted([str(mnt), str(bind)])
        quiet = NoPrograms("here")  # in-process, the XFS and the mount need no program
        assert loop.fs_uuid(quiet, device) == UUID
        assert mounts.mounted_at(quiet, str(mnt)) is not None
        _run("umount", str(bind))
        _run("umount", str(mnt))
        assert _both(mounts.mounted_at, str(mnt)) is None
    finally:
        subprocess.run(["umount", str(bind)], capture_output=True)
        subprocess.run(["umount", str(mnt)], capture_output=True)
        subprocess.run(["losetup", "--detach", device], capture_output=True)
        subprocess.run(["losetup", "--detach", blank], capture_output=True)
    assert _both(loop.loop_devices, str(image)) == []
