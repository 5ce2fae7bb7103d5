"""The dev cluster's nodes are real: own addresses, hostnames and mounts, multi-node jobs, node failures.

One cluster of 2 compute and 3 storage nodes serves the module (the last test takes it down and checks
that nothing is left); a failed ``up`` gets a cluster of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurmlink.cli.main import main
from slurmlink.slurm.devcluster import (
    DevCluster,
    DevClusterError,
    node_command,
    node_exists,
    node_pids,
    parse_scontrol_record,
    placeholder_burst_buffer,
    spawn_in_node,
)
from support.devcluster import (
    cluster_leftovers,
    held_namespaces,
    new_cluster,
    skip_unless_possible,
    teardown_cluster,
)
from support.waiting import wait_for

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    skip_unless_possible()
    dev = new_cluster("slurmlink-multinode-", compute_nodes=2, storage_nodes=3)
    try:
        dev.up(burst_buffer=placeholder_burst_buffer(), wait_timeout=120)
        yield dev
    finally:
        teardown_cluster(dev)


def _job_user_run(cluster: DevCluster, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    result = cluster.run_as_job_user(list(args), timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def _nodes_record(cluster: DevCluster) -> dict[str, dict[str, str]]:
    """``scontrol show nodes``, one record per node."""
    result = cluster.run_slurm(["scontrol", "show", "nodes"], timeout=10)
    assert result.returncode == 0, result.stderr
    records = [parse_scontrol_record(block) for block in result.stdout.split("\n\n") if block.strip()]
    return {record["NodeName"]: record for record in records}


def test_layout_two_compute_three_storage_nodes_each_with_its_own_address(cluster: DevCluster) -> None:
    assert [(n.name, n.role) for n in cluster.nodes] == [
        ("compute1", "compute"),
        ("compute2", "compute"),
        ("storage1", "storage"),
        ("storage2", "storage"),
        ("storage3", "storage"),
    ]
    addresses = [node.address for node in cluster.nodes]
    assert len(set(addresses)) == 5
    assert cluster.network is not None and cluster.controller_address not in addresses
    for node in cluster.nodes:
        assert node_exists(node)
        # Its own hostname and address, seen from inside.
        assert cluster.run_in_node(node, ["hostname"]).stdout.strip() == node.name
        shown = cluster.run_in_node(node.name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f" {node.address}/24 " in shown, shown
    status = cluster.status()
    assert status.running and status.node_state == "idle", status
    assert [(n.name, n.exists, n.slurmd) for n in status.nodes] == [
        ("compute1", True, True),
        ("compute2", True, True),
        ("storage1", True, False),
        ("storage2", True, False),
        ("storage3", True, False),
    ]


def test_scontrol_shows_both_compute_nodes_idle_at_their_addresses(cluster: DevCluster) -> None:
    records = _nodes_record(cluster)
    assert sorted(records) == ["compute1", "compute2"]  # storage nodes run no slurmd
    for node in cluster.compute_nodes:
        record = records[node.name]
        assert record["State"] == "IDLE", record
        assert record["NodeAddr"] == node.address and record["NodeHostName"] == node.name, record


def test_srun_on_two_nodes_runs_on_both(cluster: DevCluster) -> None:
    code, out, err = _job_user_run(cluster, "srun", "-N2", "hostname")
    assert code == 0, err
    assert sorted(out.split()) == ["compute1", "compute2"]


def test_batch_job_steps_reach_the_other_node_and_the_controller(cluster: DevCluster) -> None:
    """A batch script on compute1 launches a step on both nodes (node to node, and back to slurmctld)."""
    out = cluster.jobs_dir / "two-nodes-%j.out"
    script = "#!/bin/sh\nsrun -l hostname | sort\n"
    code, stdout, err = _job_user_run(
        cluster, "sbatch", "--parsable", "-N2", "-o", str(out), "--wrap", script
    )
    assert code == 0, err
    job_id = stdout.strip().split(";")[0]
    info = cluster.wait_for_job(job_id, timeout=60)
    assert info["NodeList"] == "compute[1-2]", info
    text = wait_for(
        lambda: (cluster.jobs_dir / f"two-nodes-{job_id}.out").read_text(), message="the job's output"
    )
    assert text.split() == ["0:", "compute1", "1:", "compute2"]


def test_a_mount_inside_one_node_is_seen_by_its_jobs_only(cluster: DevCluster) -> None:
    """Same path, one node's tmpfs: the other node's job (and the host) still see the directory below."""
    path = cluster.jobs_dir / "per-node-mount"
    path.mkdir(mode=0o755)
    compute2 = cluster.node("compute2")
    mounted = cluster.run_in_node(
        compute2, ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(path)]
    )
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert (
            cluster.run_in_node(compute2, ["sh", "-c", f"echo on-compute2 > {path}/marker"]).returncode == 0
        )
        probe = f"findmnt -n -o FSTYPE {path} || echo none; cat {path}/marker 2>/dev/null || echo no-marker"
        code, out, err = _job_user_run(cluster, "srun", "-N2", "-l", "sh", "-c", probe)
        assert code == 0, err
        lines = sorted(out.splitlines())
        assert lines == ["0: no-marker", "0: none", "1: on-compute2", "1: tmpfs"], out
        assert not (path / "marker").exists()  # nor does the host see it
    finally:
        cluster.run_in_node(compute2, ["umount", str(path)])


def test_a_daemon_on_a_storage_node_serves_the_compute_nodes_by_name(cluster: DevCluster) -> None:
    """spawn_in_node runs a daemon in the node's namespaces; compute nodes reach it as storage2:PORT."""
    storage2 = cluster.node("storage2")
    log = cluster.log_dir / "storage2-http.log"
    server = [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8123", "--directory", "/"]
    pid = spawn_in_node(storage2, server, log)
    try:
        assert pid in wait_for(lambda: node_pids(storage2), message="the server among storage2's processes")
        assert pid not in node_pids(cluster.node("storage1"))
        fetch = (
            "import urllib.request, sys\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        print(urllib.request.urlopen('http://storage2:8123/', timeout=5).status); break\n"
            "    except OSError:\n"
            "        import time; time.sleep(0.1)\n"
        )
        result = cluster.run_in_node("compute1", [sys.executable, "-c", fetch], timeout=60)
        assert result.stdout.strip() == "200", result.stdout + result.stderr + log.read_text()
        # Not on the host: the server listens in storage2's network namespace only.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", 8123)) != 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: pid not in node_pids(storage2), message="the server to stop")


def test_node_command_argv_and_cli_exec(cluster: DevCluster) -> None:
    node = cluster.node("storage1")
    argv = node_command(node, ["id", "-un"], user=cluster.job_user, env={"A": "1"}, cwd="/tmp")
    assert argv == [
        "nsenter",
        f"--net={node.net_ns}",
        f"--uts={node.uts_ns}",
        f"--mount={node.mnt_ns}",
        "--wd=/tmp",
        "--",
        *("runuser", "-u", cluster.job_user, "--"),
        *("env", "A=1"),
        *("id", "-un"),
    ]
    with pytest.raises(ValueError):
        node_command(node, ["A=1"], env={"B": "2"})
    result = cluster.run_in_node(
        node, ["sh", "-c", "echo $(id -un) $(pwd) $A"], user=cluster.job_user, env={"A": "1"}, cwd="/tmp"
    )
    assert result.stdout.split() == [cluster.job_user, "/tmp", "1"], result.stderr

    runner = CliRunner()
    where = ["--state-dir", str(cluster.state_dir)]
    listed = runner.invoke(main, ["dev-cluster", "nodes", *where])
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t")[:3] for line in listed.output.splitlines()] == [
        [n.name, n.role, n.address] for n in cluster.nodes
    ]
    env = runner.invoke(main, ["dev-cluster", "env", *where])
    assert "export SLURMLINK_COMPUTE_NODES=compute1,compute2" in env.output.splitlines()
    assert "export SLURMLINK_STORAGE_NODES=storage1,storage2,storage3" in env.output.splitlines()
    status = runner.invoke(main, ["dev-cluster", "status", *where], terminal_width=200)
    assert status.exit_code == 0, status.output
    for node in cluster.nodes:
        assert re.search(rf"node {node.name} .*{re.escape(node.address)}", status.output), status.output
    # exec replaces the process, so it runs in a subprocess.
    result = cluster.run_slurm(
        [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "dev-cluster",
            "exec",
            *where,
            "storage3",
            "--",
            "hostname",
        ],
        timeout=30,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "storage3"), result.stderr


def test_a_killed_slurmd_fails_two_node_jobs_and_slurm_notices(cluster: DevCluster) -> None:
    pid = cluster.status().pids["slurmd@compute2"]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not cluster.status().slurmd, message="slurmd on compute2 to die")
    code, _, err = _job_user_run(cluster, "srun", "-N2", "hostname", timeout=120)
    assert code != 0
    assert "Task launch for" in err and "failed on node compute2" in err, err
    # The failed launch makes slurmctld mark the node not responding ("*").
    wait_for(
        lambda: (cluster.node_states() or {}).get("compute2", "").endswith("*"),
        timeout=60,
        interval=0.5,
        message="compute2 to be marked not responding",
    )
    # The failed job stays COMPLETING on compute2 until slurmctld re-sends its kill (minutes); an admin
    # marks the node down instead, which ends it. up then restarts slurmd and resumes the node.
    down = ["scontrol", "update", "nodename=compute2", "state=down", "reason=slurmd killed by a test"]
    assert cluster.run_slurm(down, timeout=30).returncode == 0
    status = cluster.up(burst_buffer=placeholder_burst_buffer(), wait_timeout=120)
    assert status.running and status.pids["slurmd@compute2"] not in (None, pid), status
    assert status.node_state == "idle", status
    code, out, err = _job_user_run(cluster, "srun", "-N2", "hostname", timeout=120)
    assert code == 0, err
    assert sorted(out.split()) == ["compute1", "compute2"]


def test_failed_up_leaves_nothing_behind_and_a_second_cluster_gets_its_own_network(
    cluster: DevCluster,
) -> None:
    running = cluster
    cluster = new_cluster("slurmlink-multinode-failed-", compute_nodes=2, storage_nodes=2)
    try:
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("0.0.0.0", cluster.ctld_port))
            taken.listen()
            with pytest.raises(DevClusterError, match=f"SlurmctldPort {cluster.ctld_port}"):
                cluster.up(wait_timeout=60)
        # The network and the nodes were made before the port check failed, and are gone again.
        assert cluster.network is not None and running.network is not None
        assert not cluster.network.subnet.overlaps(running.network.subnet)
        assert cluster.network.cluster_id != running.network.cluster_id
        assert cluster_leftovers(cluster.state_dir, cluster.network, set()) == []
        assert not Path(cluster.ns_dir).exists()
    finally:
        teardown_cluster(cluster)


def test_down_purge_removes_every_process_namespace_and_interface(cluster: DevCluster) -> None:
    """Last in the module: it takes the shared cluster down."""
    network = cluster.network
    assert network is not None
    # A job process left running inside a node, and a mount inside a node: down removes both with it.
    code, _, err = _job_user_run(cluster, "sbatch", "-w", "compute1", "--wrap", "sleep 300")
    assert code == 0, err

    def sleeping() -> bool:
        for pid in node_pids(cluster.node("compute1")):
            with contextlib.suppress(OSError):
                if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
        return False

    wait_for(sleeping, timeout=60, message="the job's sleep on compute1")
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cluster.jobs_dir)]
    assert cluster.run_in_node("storage1", mount).returncode == 0
    with held_namespaces(cluster) as ns_ids:
        assert len(ns_ids) == 15
        result = CliRunner().invoke(
            main, ["dev-cluster", "down", "--state-dir", str(cluster.state_dir), "--purge"]
        )
        assert result.exit_code == 0, result.output
        assert not cluster.state_dir.exists()
        assert cluster_leftovers(cluster.state_dir, network, ns_ids) == []
