"""Fixtures for the file-system driver tests: real XFS, loop devices, GlusterFS, mount namespaces.

They need root (loop devices, mounts, namespaces); without it they skip. A missing tool fails the test
with the package to install (``scripts/install-system-packages`` installs them all).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.netns import MountNamespaces
from support.storage import cleanup_below, world_searchable_dir

TOOLS = {
    "mkfs.xfs": "xfsprogs",
    "losetup": "mount",
    "findmnt": "util-linux",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "ip": "iproute2",
}


@pytest.fixture(scope="session", autouse=True)
def storage_host() -> None:
    """Root and the tools; skips without root, fails naming the package when a tool is missing."""
    if os.geteuid() != 0:
        pytest.skip("file-system driver tests need root (loop devices, mounts, namespaces)")
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-system-packages")


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """This test's directory (pools, mount points), removed afterwards with whatever is left below it."""
    path = world_searchable_dir("slurmlink-storage-")
    try:
        yield path
    finally:
        cleanup_below(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def compute_nodes(work_dir: Path) -> Iterator[MountNamespaces]:
    """Two "compute nodes" c1 and c2: mount namespaces of their own, pinned under work_dir."""
    namespaces = MountNamespaces(work_dir / "ns", ["c1", "c2"])
    with namespaces:
        try:
            yield namespaces
        finally:
            namespaces.close(below=work_dir)
