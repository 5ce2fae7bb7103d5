"""Partitions on a real dev cluster: made by ``dev-cluster up --partition``, discovered from Slurm.

The module's own two-node cluster (private ports and state dir) has three partitions: ``open`` without
any limit, ``short`` (MaxTime=30, MaxNodes=1) and the mixed-case ``GPU_Short`` on compute2 with memory
limits and node features. Slurm itself must enforce the limits discovery reports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import DevCluster, free_port_pair
from slurmlink.slurm.partitions import Partition, discover_partitions_sync
from support.devcluster import make_state_dir, skip_unless_possible, teardown_cluster

pytestmark = pytest.mark.slurm

CLUSTER_NAME = "slurmlink-parts"
PARTITIONS = (
    "open:MaxTime=UNLIMITED",
    "short:MaxTime=30,MaxNodes=1",
    "GPU_Short:Nodes=compute2,MaxTime=2-00:00:00,MaxMemPerCPU=1G,DefMemPerCPU=512,Features=gpu,cuda",
)
LIMITS = (
    "max_time",
    "default_time",
    "max_nodes",
    "max_cpus_per_node",
    "max_memory_per_node",
    "max_memory_per_cpu",
    "default_memory_per_node",
    "default_memory_per_cpu",
)


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``slurmlink ARGS`` in a subprocess of this interpreter (this source tree)."""
    return subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _up_args(cluster: DevCluster, *extra: str) -> list[str]:
    where = ["--state-dir", str(cluster.state_dir)]
    ports = ["--ctld-port", str(cluster.ctld_port), "--slurmd-port", str(cluster.slurmd_port)]
    return ["dev-cluster", "up", *where, *ports, "--no-burst-buffer", *extra]


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    skip_unless_possible()
    ctld_port, slurmd_port = free_port_pair()
    handle = DevCluster(
        make_state_dir("slurmlink-partitions-"), ctld_port=ctld_port, slurmd_port=slurmd_port, compute_nodes=2
    )
    try:
        nodes = ["--compute-nodes", "2", "--storage-nodes", "0", "--cluster-name", CLUSTER_NAME]
        partitions = [word for spec in PARTITIONS for word in ("--partition", spec)]
        result = _cli(*_up_args(handle, *nodes, *partitions))
        assert result.returncode == 0, result.stderr
        yield DevCluster.from_state_dir(handle.state_dir)
    finally:
        teardown_cluster(DevCluster.from_state_dir(handle.state_dir))


def _discover(cluster: DevCluster) -> dict[str, Partition]:
    return {p.name: p for p in discover_partitions_sync(cluster.slurm_conf)}


def _sbatch(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.run_as_job_user(["sbatch", "--parsable", *args], cwd=cluster.jobs_dir, timeout=30)


def _job_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def test_discovery_reports_limits_and_nulls_for_unlimited(cluster: DevCluster) -> None:
    found = _discover(cluster)
    assert list(found) == ["open", "short", "GPU_Short"]
    cpus = os.cpu_count() or 1

    open_ = found["open"]
    assert open_.default and open_.up
    assert open_.nodes == ("compute1", "compute2") and open_.total_nodes == 2
    assert open_.cpus_per_node == cpus and open_.total_cpus == 2 * cpus
    assert open_.memory_per_node is not None and open_.memory_per_node > 0
    for name in LIMITS:
        assert getattr(open_, name) is None, name
    assert open_.features_on_some_nodes == ("gpu", "cuda") and open_.features == ()

    short = found["short"]
    assert (short.default, short.max_time, short.max_nodes, short.default_time) == (False, 30, 1, None)
    assert short.max_memory_per_node is None and short.max_memory_per_cpu is None

    gpu = found["GPU_Short"]
    assert gpu.nodes == ("compute2",) and gpu.total_nodes == 1 and not gpu.default
    assert (gpu.max_time, gpu.max_memory_per_cpu, gpu.default_memory_per_cpu) == (2880, 1024, 512)
    assert gpu.features == ("gpu", "cuda")

    # Never 0 or NaN for "no limit", and plain JSON nulls when published.
    for partition in found.values():
        for name in LIMITS:
            value = getattr(partition, name)
            assert value is None or (value > 0 and not math.isnan(value)), (partition.name, name)
    published = json.loads(json.dumps([p.to_json() for p in found.values()], allow_nan=False))
    assert published[0]["max_time"] is None and published[0]["max_memory_per_node"] is None


def test_slurm_itself_refuses_jobs_beyond_a_partitions_limits(cluster: DevCluster) -> None:
    too_many = _sbatch(cluster, "-p", "short", "-N2", "--wrap", "true")
    assert too_many.returncode != 0 and "Node count specification invalid" in too_many.stderr
    too_long = _sbatch(cluster, "-p", "short", "-t", "31", "--wrap", "true")
    assert too_long.returncode != 0 and "time limit" in too_long.stderr.lower()
    # EnforcePartLimits=ANY: a job that fits one of its partitions is taken and runs there.
    either = _job_id(_sbatch(cluster, "-p", "short,open", "-N2", "--wrap", "true"))
    assert cluster.wait_for_job(either, timeout=60)["Partition"] == "open"


def test_mem_with_a_suffix_runs_in_a_partition_without_memory_limits(cluster: DevCluster) -> None:
    memory = _discover(cluster)["open"].memory_per_node or 0
    if memory < 4096:
        pytest.skip(f"the nodes have {memory} MiB, less than the 4G the job asks for")
    job = _job_id(_sbatch(cluster, "-p", "open", "--mem=4G", "--wrap", "true"))
    info = cluster.wait_for_job(job, timeout=60)
    assert info["MinMemoryNode"] == "4G"


def test_cpu_use_follows_running_jobs(cluster: DevCluster) -> None:
    job = _job_id(_sbatch(cluster, "-p", "GPU_Short", "-n1", "--wrap", "sleep 300"))
    try:
        cluster.wait_for_job(job, states=("RUNNING",), timeout=60)
        found = _discover(cluster)
        assert found["GPU_Short"].allocated_cpus == 1
        assert found["GPU_Short"].idle_cpus == found["GPU_Short"].total_cpus - 1
        assert found["open"].allocated_cpus == 1  # compute2 is in both
    finally:
        cluster.run_slurm(["scancel", job], timeout=10)
    cluster.wait_for_job(job, states=("CANCELLED",), timeout=60)


def test_partitions_command_prints_discovery_with_admin_overrides(
    cluster: DevCluster, tmp_path: Path
) -> None:
    config = tmp_path / "partitions.toml"
    config.write_text(
        '[partition.GPU_Short]\nextra_features = [{name = "cuda", version = "10", quantity = 1}]\n'
    )
    env = {"SLURM_CONF": str(cluster.slurm_conf)}
    result = _cli("slurm", "partitions", "--json", "--config", str(config), env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = {item["name"]: item for item in json.loads(result.stdout)}
    assert listed["open"]["max_time"] is None and listed["open"]["default"] is True
    assert listed["GPU_Short"]["extra_features"] == [{"name": "cuda", "version": "10", "quantity": 1}]
    table = _cli("slurm", "partitions", env=env, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["PARTITION", "STATE", "NODES"]
    assert lines[1].split()[:3] == ["open*", "UP", "2"] and "UNLIMITED" in lines[1]
    assert lines[2].split()[5:8] == ["00:30:00", "NONE", "1"]


def test_later_ups_keep_the_partitions_and_reconfigure_changes(cluster: DevCluster) -> None:
    pid = cluster.status().pids["slurmctld"]
    again = _cli(*_up_args(cluster))
    assert again.returncode == 0, again.stderr
    assert "configuration unchanged" in again.stderr
    assert list(_discover(cluster)) == ["open", "short", "GPU_Short"]

    changed = [
        *PARTITIONS[:2],
        PARTITIONS[2].replace("Features=gpu,cuda", "Features=gpu"),
        "tiny:Nodes=1,MaxTime=5",
    ]
    try:
        DevCluster.from_state_dir(cluster.state_dir, partitions=changed).up(wait_timeout=120)
        found = _discover(cluster)
        assert list(found) == ["open", "short", "GPU_Short", "tiny"]
        assert found["GPU_Short"].features == ("gpu",) and found["tiny"].nodes == ("compute1",)
        assert found["tiny"].max_time == 5
        # Partitions and node features take a reconfigure: the same slurmctld still runs.
        assert cluster.status().pids["slurmctld"] == pid
    finally:
        DevCluster.from_state_dir(cluster.state_dir, partitions=PARTITIONS).up(wait_timeout=120)
    assert list(_discover(cluster)) == ["open", "short", "GPU_Short"]
    assert _discover(cluster)["GPU_Short"].features == ("gpu", "cuda")


def test_a_new_cluster_name_restarts_slurm_on_the_same_state(cluster: DevCluster) -> None:
    def cluster_name() -> str:
        shown = cluster.run_slurm(["scontrol", "show", "config"], timeout=10).stdout
        return next(
            line.split("=", 1)[1].strip() for line in shown.splitlines() if line.startswith("ClusterName")
        )

    pid = cluster.status().pids["slurmctld"]
    try:
        result = _cli(*_up_args(cluster, "--cluster-name", "Renamed-Parts"))
        assert result.returncode == 0, result.stderr
        assert "restarting Slurm for changed clustername" in result.stderr
        assert cluster_name() == "renamed-parts"
        assert cluster.status().pids["slurmctld"] != pid
        assert list(_discover(cluster)) == ["open", "short", "GPU_Short"]
    finally:
        restored = _cli(*_up_args(cluster, "--cluster-name", CLUSTER_NAME))
    assert restored.returncode == 0, restored.stderr
    assert cluster_name() == CLUSTER_NAME
    started = time.monotonic()
    job = _job_id(_sbatch(cluster, "--wrap", "true"))
    assert cluster.wait_for_job(job, timeout=60)["Partition"] == "open"
    assert time.monotonic() - started < 60
