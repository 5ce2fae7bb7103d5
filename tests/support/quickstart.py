"""A quick start (``slurmlink quickstart up``) of its own for a test module: state dir, ports, clients,
and its Slurm jobs (submitted as the cluster's job user, waited for through teardown)."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from slurmlink.auth.kubeconfig import load_kubeconfig
from slurmlink.client.http import ssl_context
from slurmlink.slurm.devcluster import DevCluster, free_port_pair
from support.devcluster import make_state_dir, quickstart_cli, skip_unless_possible
from support.postgres import free_port
from support.waiting import wait_for

_scripts = itertools.count(1)


class QuickStart:
    def __init__(
        self,
        directory: Path,
        listen: str,
        ports: list[str],
        *,
        compute_nodes: int = 2,
        storage_nodes: int = 3,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.dir = directory
        self.listen = listen
        self.where = ["--state-dir", str(directory)]
        nodes = ["--compute-nodes", str(compute_nodes), "--storage-nodes", str(storage_nodes)]
        self.args = [*self.where, "--listen", listen, *ports, *nodes, *extra_args]
        self.up_result: subprocess.CompletedProcess[str] | None = None
        self.down_result: subprocess.CompletedProcess[str] | None = None

    @property
    def admin(self) -> Path:
        return self.dir / "server" / "admin.kubeconfig"

    @property
    def cluster(self) -> DevCluster:
        return DevCluster.from_state_dir(self.dir / "cluster")

    def client(self, kubeconfig: Path | None = None) -> httpx.Client:
        """An API client with ``kubeconfig``'s client certificate (the admin's by default)."""
        creds = load_kubeconfig(kubeconfig or self.admin)
        return httpx.Client(base_url=creds.server, verify=ssl_context(creds), timeout=30)

    def agent_pid(self, node: str) -> int | None:
        path = self.dir / "run" / f"agent.{node}.pid"
        return int(path.read_text()) if path.exists() else None

    def down(self) -> subprocess.CompletedProcess[str]:
        """Stop it; its state dir (logs!) is purged unless ``SLURMLINK_KEEP_QUICKSTART=1``."""
        if self.down_result is None:
            keep = os.environ.get("SLURMLINK_KEEP_QUICKSTART") == "1"
            purge = () if keep else ("--purge",)
            self.down_result = quickstart_cli("down", *self.where, *purge, timeout=180)
        return self.down_result


@contextmanager
def running_quickstart(
    prefix: str,
    *,
    compute_nodes: int = 2,
    storage_nodes: int = 3,
    extra_args: tuple[str, ...] = (),
    accounting: bool = False,
) -> Iterator[QuickStart]:
    """Bring one up on a fresh state dir and free ports; take it down (``--purge``) afterwards.

    ``extra_args`` go to ``quickstart up`` (e.g. ``--burst-buffer-plugin datawarp``). Accounting storage
    (slurmdbd, on a free port) only with ``accounting``: the quick start's default, but it adds seconds to
    every start that tests without sacct need not spend (a later ``up`` remembers the choice)."""
    skip_unless_possible()
    directory = make_state_dir(prefix)
    ctld_port, slurmd_port = free_port_pair()
    ports = ["--ctld-port", str(ctld_port), "--slurmd-port", str(slurmd_port)]
    ports += ["--accounting", "--dbd-port", str(free_port("0.0.0.0"))] if accounting else ["--no-accounting"]
    quick = QuickStart(
        directory,
        f"127.0.0.1:{free_port()}",
        ports,
        compute_nodes=compute_nodes,
        storage_nodes=storage_nodes,
        extra_args=extra_args,
    )
    try:
        quick.up_result = quickstart_cli("up", *quick.args, timeout=480)
        assert quick.up_result.returncode == 0, quick.up_result.stderr
        yield quick
    finally:
        quick.down()


def submit_job(qs: QuickStart, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """sbatch ``body`` (a /bin/sh script) as the job user; output goes to ``<state>/jobs/<id>.out``."""
    cluster = qs.cluster
    jobs = cluster.state_dir / "jobs"
    script = jobs / f"bb-test-{next(_scripts)}.sh"
    script.write_text("#!/bin/sh\n" + body.strip() + "\n")
    script.chmod(0o755)
    return cluster.run_as_job_user(
        ["sbatch", "--parsable", "--chdir", str(jobs), "-o", str(jobs / "%j.out"), *args, str(script)],
        timeout=60,
    )


def run_job(qs: QuickStart, body: str, *args: str) -> str:
    """The id of the job ``body`` became (the submission must succeed)."""
    result = submit_job(qs, body, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def finish_job(qs: QuickStart, job_id: str, timeout: float = 240) -> str:
    """The job's output once it COMPLETED and its buffers were torn down (Slurm reports COMPLETED
    while teardown still runs)."""
    qs.cluster.wait_for_job(job_id, ("COMPLETED",), timeout=timeout)
    wait_for(
        lambda: (qs.cluster.job_info(job_id) or {}).get("BurstBufferState", "complete") == "complete",
        timeout,
        0.2,
        message=f"job {job_id}'s teardown",
    )
    return (qs.cluster.state_dir / "jobs" / f"{job_id}.out").read_text()


def slurm_pool_total(cluster: DevCluster, pool: str) -> int:
    """The bytes Slurm believes ``pool`` has (0 before its first poll of the pools)."""
    shown = cluster.run_slurm(["scontrol", "show", "burst"], timeout=10).stdout
    match = re.search(rf"PoolName\[\d+\]={pool} .*?TotalSpace=(\d+)(\w*)", shown)
    if not match:
        return 0
    units = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    return int(match.group(1)) * units.get(match.group(2), 1)


@contextmanager
def burst_buffer_quickstart(prefix: str) -> Iterator[QuickStart]:
    """The multi-node quick start, once Slurm knows its pools' sizes (it polls them every 30 s)."""
    with running_quickstart(prefix) as quick:
        for pool in ("xfs", "gluster"):
            wait_for(
                lambda p=pool: slurm_pool_total(quick.cluster, p) > 0,  # type: ignore[misc]
                90,
                0.5,
                message=f"Slurm to know pool {pool}",
            )
        yield quick
