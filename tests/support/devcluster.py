"""Building blocks for tests against a real single-node Slurm (used by tests/slurm fixtures and tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DevCluster, free_port_pair


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


def new_cluster(prefix: str) -> DevCluster:
    """A DevCluster object on a new state dir and free ports; not started."""
    ctld_port, slurmd_port = free_port_pair()
    return DevCluster(
        make_state_dir(prefix),
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        cluster_name="slurmlink-test",
    )


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
