"""Memory limits on a real dev cluster: ``dev-cluster up --memory-limits`` makes Slurm enforce ``--mem`` with
cgroup v1's memory controller, so a job over its memory ends OUT_OF_MEMORY.

The module's own one-node cluster (private ports and state dir, no storage node, no burst buffer plugin)
is brought up through the CLI with ``--memory-limits``; later tests turn them off and on again while it
runs (each a restart of slurmctld and slurmd), so they run in the order written.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DevCluster, free_port_pair
from slurmlink.slurm.devcluster.config import CGROUP_CONF, CGROUP_CONF_NAME, MEMORY_LIMIT_LINES, first_job_id
from slurmlink.slurm.devcluster.host import MEMORY_CGROUP, memory_cgroup_problem
from support.devcluster import make_state_dir, skip_unless_possible, teardown_cluster
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

MIB = 1024 * 1024
#: Touches every page of ``size`` MiB, so the memory is really used (a bare bytearray may stay untouched).
TOUCH = "x = bytearray({size}*1024*1024); [x.__setitem__(i, 1) for i in range(0, len(x), 4096)]"


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``slurmlink ARGS`` in a subprocess of this interpreter (this source tree)."""
    return subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _up(cluster: DevCluster, *flags: str) -> DevCluster:
    """``slurmlink dev-cluster up`` of the module's cluster; the cluster as the saved settings say."""
    where = ["--state-dir", str(cluster.state_dir)]
    result = _cli("dev-cluster", "up", *where, "--no-burst-buffer", "--wait-timeout", "120", *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    return DevCluster.from_state_dir(cluster.state_dir)


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    skip_unless_possible()
    problem = memory_cgroup_problem()
    if problem is not None:
        pytest.skip(f"no cgroup v1 memory controller for Slurm: {problem}")
    ctld_port, slurmd_port = free_port_pair()
    cluster = DevCluster(
        make_state_dir("slurmlink-memlimits-"),
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        cluster_name="slurmlink-memlim",
        compute_nodes=1,
        storage_nodes=0,
    )
    try:
        cluster._save_settings()  # the ports and name for the CLI's 'up' (they are not its flags here)
        yield _up(cluster, "--memory-limits")
    finally:
        teardown_cluster(DevCluster.from_state_dir(cluster.state_dir))


def submit(cluster: DevCluster, *args: str, touch_mib: int | None = None, script: str = "true") -> int:
    """sbatch a job as the job user (with ``touch_mib``: python3 using that much memory); its job id."""
    if touch_mib is not None:
        script = f"/usr/bin/python3 -c '{TOUCH.format(size=touch_mib)}'"
    out = str(cluster.jobs_dir / "memlimits-%j.out")
    argv = ["sbatch", "--parsable", "-o", out, "--time=5", *args, "--wrap", script]
    result = cluster.run_as_job_user(argv, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().split(";")[0])


def config_value(cluster: DevCluster, key: str) -> str:
    """A key of ``scontrol show config``: what the running slurmctld uses."""
    result = cluster.run_slurm(["scontrol", "show", "config"], timeout=30)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    raise AssertionError(f"{key} missing from scontrol show config")


def job_cgroup(cluster: DevCluster, job_id: int) -> Path:
    uid = pwd.getpwnam(cluster.job_user).pw_uid
    return MEMORY_CGROUP / "slurm_compute1" / f"uid_{uid}" / f"job_{job_id}"


def test_config_and_cgroup_conf_with_memory_limits(cluster: DevCluster) -> None:
    assert cluster.memory_limits and cluster.status().memory_limits_enabled
    lines = cluster.slurm_conf.read_text().splitlines()
    assert set(MEMORY_LIMIT_LINES) <= set(lines)
    assert (cluster.etc_dir / CGROUP_CONF_NAME).read_text() == CGROUP_CONF
    assert config_value(cluster, "SelectTypeParameters") == "CR_CORE_MEMORY"
    assert config_value(cluster, "TaskPlugin") == "task/cgroup"
    assert config_value(cluster, "DefMemPerCPU") == "256"


def test_job_over_its_memory_ends_out_of_memory(cluster: DevCluster) -> None:
    job_id = submit(cluster, "--mem=100M", touch_mib=400)
    assert cluster.network is not None
    assert job_id >= first_job_id(cluster.network)  # numbered from the cluster's own FirstJobId
    info = cluster.wait_for_job(job_id, ["OUT_OF_MEMORY"], timeout=120)
    assert info["ExitCode"] == "0:125", info
    assert info["Reason"] == "OutOfMemory", info


def test_job_within_its_memory_completes(cluster: DevCluster) -> None:
    job_id = submit(cluster, "--mem=200M", touch_mib=50)
    info = cluster.wait_for_job(job_id, ["COMPLETED"], timeout=120)
    assert info["ExitCode"] == "0:0", info


def test_job_without_mem_gets_the_default_per_cpu(cluster: DevCluster) -> None:
    job_id = submit(cluster, "-n1")
    info = cluster.wait_for_job(job_id, ["COMPLETED"], timeout=120)
    assert info.get("MinMemoryCPU") == "256M", info


def test_turning_memory_limits_off_restores_the_plain_config(cluster: DevCluster) -> None:
    off = _up(cluster, "--no-memory-limits")  # restarts slurmctld and slurmd
    assert not off.memory_limits and not off.status().memory_limits_enabled
    text = off.slurm_conf.read_text()
    lines = text.splitlines()
    assert "SelectTypeParameters=CR_Core" in lines and "TaskPlugin=task/none" in lines
    assert not set(MEMORY_LIMIT_LINES) & set(lines)
    assert not any(line.startswith(("DefMemPerCPU", "FirstJobId")) for line in lines)
    assert not (off.etc_dir / CGROUP_CONF_NAME).exists()
    assert config_value(off, "SelectTypeParameters") == "CR_CORE"
    assert config_value(off, "TaskPlugin") == "task/none"
    # Without enforcement --mem is only bookkeeping: the same job as above completes.
    job_id = submit(off, "--mem=100M", touch_mib=400)
    assert off.wait_for_job(job_id, ["COMPLETED"], timeout=120)["ExitCode"] == "0:0"
    # An 'up' without the flag keeps the last choice.
    assert not _up(off).memory_limits
    assert off.slurm_conf.read_text() == text


def test_turning_them_on_again_and_down_removes_the_jobs_cgroups(cluster: DevCluster) -> None:
    on = _up(cluster, "--memory-limits")
    assert config_value(on, "TaskPlugin") == "task/cgroup"
    job_id = submit(on, "--mem=50M", script="sleep 300")
    on.wait_for_job(job_id, ["RUNNING"], timeout=60)
    limit = job_cgroup(on, job_id) / "memory.limit_in_bytes"
    wait_for(limit.exists, timeout=30, message=f"{limit}")
    assert int(limit.read_text()) == 50 * MIB
    # down kills the job with its node; slurmstepd never gets to remove its cgroups, down does.
    on.down()
    assert not job_cgroup(on, job_id).exists()
    assert os.path.isdir(MEMORY_CGROUP)
