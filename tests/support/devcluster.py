"""Building blocks for tests against a real Slurm dev cluster (used by tests/slurm fixtures and tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DevCluster, Network, free_port_pair
from support.processes import processes_referencing


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the dev cluster runs slurmctld/slurmd as root")
    if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
        pytest.skip("the dev cluster needs Debian's Slurm packages (dpkg/apt)")


def make_state_dir(prefix: str) -> Path:
    """A fresh state dir the job user can reach (pytest's tmp_path lives under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


def new_cluster(prefix: str, *, compute_nodes: int = 1, storage_nodes: int = 1) -> DevCluster:
    """A DevCluster object on a new state dir and free ports; not started."""
    ctld_port, slurmd_port = free_port_pair()
    return DevCluster(
        make_state_dir(prefix),
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        cluster_name="slurmlink-test",
        compute_nodes=compute_nodes,
        storage_nodes=storage_nodes,
    )


@contextlib.contextmanager
def held_namespaces(cluster: DevCluster) -> Iterator[set[tuple[int, int]]]:
    """(device, inode) of every namespace pinned for the cluster's nodes now, kept open meanwhile.

    The open files keep the namespaces (not what is in them) alive, so their inode numbers cannot be
    reused by another cluster's new namespaces while a test scans /proc for processes inside them.
    """
    fds = []
    try:
        for node in cluster.nodes:
            for pin in (node.net_ns, node.uts_ns, node.mnt_ns):
                with contextlib.suppress(OSError):
                    fds.append(os.open(pin, os.O_RDONLY))
        yield {(st.st_dev, st.st_ino) for st in map(os.fstat, fds)}
    finally:
        for fd in fds:
            os.close(fd)


def processes_in_namespaces(ids: set[tuple[int, int]]) -> dict[int, str]:
    """Live processes inside any of the namespaces ``ids`` (from :func:`held_namespaces`), with their argv."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for kind in ("net", "uts", "mnt"):
            try:
                st = (entry / "ns" / kind).stat()
                if (st.st_dev, st.st_ino) in ids:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    break
            except OSError:
                break
    return found


def cluster_leftovers(state_dir: Path, network: Network | None, ns_ids: set[tuple[int, int]]) -> list[str]:
    """What a dev cluster left on the host: mounts (namespace pins) under its state dir, interfaces with its
    name prefix, routes to its /24, processes naming its dir or inside its nodes' namespaces."""
    left = []
    prefix = str(state_dir)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if point == prefix or point.startswith(prefix + "/"):
            left.append(f"mount {line}")
    if network is not None:
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
        ours = f"sl{network.cluster_id}"
        left += [f"interface {line}" for line in links.splitlines() if line.startswith(ours)]
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        left += [f"route {line}" for line in routes.splitlines() if line.startswith(str(network.subnet))]
    left += [f"process {pid}: {why}" for pid, why in processes_referencing(state_dir).items()]
    left += [f"process {pid} in a node: {argv}" for pid, argv in processes_in_namespaces(ns_ids).items()]
    return left


def teardown_cluster(cluster: DevCluster) -> None:
    """Stop the cluster; purge its state dir unless SLURMLINK_KEEP_DEV_CLUSTER is set."""
    keep = bool(os.environ.get("SLURMLINK_KEEP_DEV_CLUSTER"))
    cluster.down(purge=not keep)
    if not keep:
        shutil.rmtree(cluster.state_dir, ignore_errors=True)


def quickstart_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``slurmlink quickstart ARGS`` in a subprocess (this interpreter, so this source tree)."""
    return subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "quickstart", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
