"""The dev cluster's accounting storage: slurmdbd on a private MariaDB, so sacct and sacctmgr work.

One cluster (one compute node, no storage node) with accounting is shared by the module, on free ports
and its own state dir; the last test takes it down and up again, so it runs last.
"""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.slurm.devcluster import (
    DEFAULT_ACCOUNT,
    DevCluster,
    DevClusterError,
    DevClusterStatus,
    free_port_pair,
)
from support.devcluster import make_state_dir, skip_unless_possible, teardown_cluster
from support.postgres import free_port
from support.unix_users import ensure_unix_user
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

FIELDS = ("JobIDRaw", "Account", "State", "ElapsedRaw", "AllocTRES")
#: A requeued job may start again only once its node has forgotten its revoked credential: Slurm holds
#: it back for AuthInfo's cred_expire (120 s by default). A short one keeps the requeue test short.
CRED_EXPIRE = 10
_names = itertools.count(1)


def up(cluster: DevCluster) -> DevClusterStatus:
    """``up`` with this module's short credential lifetime (every ``up`` must say it again)."""
    auth_info = f"AuthInfo=socket={cluster.munge_socket},cred_expire={CRED_EXPIRE}"
    return cluster.up(wait_timeout=120, extra_lines=[auth_info])


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevCluster]:
    skip_unless_possible()
    ctld_port, slurmd_port = free_port_pair()
    cluster = DevCluster(
        make_state_dir("slurmlink-accounting-"),
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        dbd_port=free_port("0.0.0.0"),
        cluster_name="slurmlink-acct",
        compute_nodes=1,
        storage_nodes=0,
        accounting=True,
    )
    try:
        status = up(cluster)
        assert status.running and status.mariadb and status.slurmdbd, status
        yield cluster
    finally:
        teardown_cluster(cluster)


def submit(cluster: DevCluster, *args: str, script: str = "true") -> str:
    """sbatch ``script`` (a shell command line) as the job user; its job id."""
    out = str(cluster.jobs_dir / "acct-%j.out")
    result = cluster.run_as_job_user(["sbatch", "--parsable", "-o", out, *args, "--wrap", script], timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def recorded(
    cluster: DevCluster, job_id: str, state: str, *, duplicates: bool = False
) -> list[dict[str, str]]:
    """The job's sacct rows once its last run is recorded in ``state`` (slurmctld reports job ends to
    slurmdbd asynchronously, so sacct may lag ``scontrol`` by a moment)."""

    def probe() -> list[dict[str, str]]:
        rows = cluster.sacct([job_id], FIELDS, duplicates=duplicates)
        return rows if rows and rows[-1]["State"] == state else []

    return wait_for(probe, 30, 0.2, message=f"sacct to show job {job_id} {state}")


def test_finished_job_is_in_sacct_with_account_and_tres(cluster: DevCluster) -> None:
    job_id = submit(cluster, script="sleep 1")
    cluster.wait_for_job(job_id, timeout=60)
    (row,) = recorded(cluster, job_id, "COMPLETED")
    assert row["JobIDRaw"] == job_id
    assert row["Account"] == DEFAULT_ACCOUNT
    assert int(row["ElapsedRaw"]) >= 1
    tres = dict(item.split("=", 1) for item in row["AllocTRES"].split(","))
    assert tres["node"] == "1" and int(tres["cpu"]) >= 1, tres
    # The exact command line of the brief: what the bank's reconciler runs.
    plain = cluster.run_slurm(["sacct", "-X", "-P", "-n", "-j", job_id, "-o", ",".join(FIELDS)], timeout=30)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith(f"{job_id}|{DEFAULT_ACCOUNT}|COMPLETED|"), plain.stdout


def test_sacctmgr_account_and_association_carry_jobs(cluster: DevCluster) -> None:
    account = f"physics{next(_names)}"
    added = cluster.sacctmgr(
        [
            "add",
            "account",
            account,
            f"cluster={cluster.cluster_name}",
            "description=test",
            "organization=test",
        ]
    )
    assert added.returncode == 0, added.stderr
    added = cluster.sacctmgr(["add", "user", cluster.job_user, f"account={account}"])
    assert added.returncode == 0, added.stderr
    assocs = cluster.run_slurm(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"user={cluster.job_user}", "format=account"], timeout=30
    )
    assert set(assocs.stdout.split()) >= {DEFAULT_ACCOUNT, account}, assocs.stdout

    job_id = submit(cluster, f"--account={account}")
    cluster.wait_for_job(job_id, timeout=60)
    (row,) = recorded(cluster, job_id, "COMPLETED")
    assert row["Account"] == account


def test_requeued_job_shows_both_runs(cluster: DevCluster) -> None:
    # The first run waits to be requeued; the second (restart count 1) finishes at once.
    job_id = submit(cluster, script='[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || sleep 300')
    cluster.wait_for_job(job_id, ("RUNNING",), timeout=60)
    requeued = cluster.run_slurm(["scontrol", "requeue", job_id], timeout=30)
    assert requeued.returncode == 0, requeued.stderr
    cluster.wait_for_job(job_id, timeout=CRED_EXPIRE + 60)
    rows = recorded(cluster, job_id, "COMPLETED", duplicates=True)
    assert [row["State"] for row in rows] == ["REQUEUED", "COMPLETED"], rows
    assert {row["JobIDRaw"] for row in rows} == {job_id}
    assert len(cluster.sacct([job_id], FIELDS)) == 1  # without -D: the last run only


def test_enforced_associations_refuse_users_without_one(cluster: DevCluster) -> None:
    stranger = ensure_unix_user("slurmlink-noassoc").pw_name
    cluster.accounting_enforce = ("associations",)
    try:
        up(cluster)
        assert "AccountingStorageEnforce=associations" in cluster.slurm_conf.read_text()
        argv = ["sbatch", "--parsable", "-o", "/dev/null", "--chdir", str(cluster.jobs_dir), "--wrap", "true"]
        refused = cluster.run_slurm(
            ["runuser", "-u", stranger, "--", "env", f"SLURM_CONF={cluster.slurm_conf}", *argv],
            cwd=cluster.jobs_dir,
            timeout=30,
        )
        assert refused.returncode != 0
        assert "Invalid account" in refused.stderr, refused.stderr
        cluster.wait_for_job(submit(cluster), timeout=60)  # the job user has its association
    finally:
        cluster.accounting_enforce = ()
        up(cluster)
    assert "AccountingStorageEnforce" not in cluster.slurm_conf.read_text()


def _accounting_processes(state_dir: Path) -> dict[int, str]:
    """Live (not zombie) mariadbd/slurmdbd processes whose command line or environment names
    ``state_dir``."""
    needle = str(state_dir).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            if name not in ("mariadbd", "slurmdbd") or state in "ZX":
                continue
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found[int(entry.name)] = name
        except OSError:
            continue
    return found


def test_taken_dbd_port_fails_up_cleanly_and_says_so() -> None:
    skip_unless_possible()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ctld_port, slurmd_port = free_port_pair()
        scratch = DevCluster(
            make_state_dir("slurmlink-accounting-taken-"),
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            dbd_port=port,
            storage_nodes=0,
            accounting=True,
        )
        try:
            with pytest.raises(
                DevClusterError, match=re.escape(f"DbdPort {port} (pick another with --dbd-port)")
            ):
                scratch.up(wait_timeout=60)
            assert not scratch.mariadb.datadir.exists()  # found before anything started
            assert _accounting_processes(scratch.state_dir) == {}
            status = scratch.status()
            assert not (status.munged or status.mariadb or status.slurmdbd), status
        finally:
            teardown_cluster(scratch)


def test_down_stops_everything_and_up_keeps_the_jobs(cluster: DevCluster) -> None:
    job_id = submit(cluster)
    cluster.wait_for_job(job_id, timeout=60)
    recorded(cluster, job_id, "COMPLETED")
    before = {row["JobIDRaw"] for row in cluster.sacct(["1", "2", "3", job_id], ("JobIDRaw",))}

    cluster.down()
    assert _accounting_processes(cluster.state_dir) == {}
    assert not cluster.status().slurmdbd and not cluster.status().mariadb

    messages: list[str] = []
    cluster.log = messages.append
    status = up(cluster)
    assert status.running and status.mariadb and status.slurmdbd, status
    assert not any("initialising" in message for message in messages), messages  # the same database
    (row,) = cluster.sacct([job_id], FIELDS)
    assert row["State"] == "COMPLETED" and row["Account"] == DEFAULT_ACCOUNT
    assert {row["JobIDRaw"] for row in cluster.sacct(["1", "2", "3", job_id], ("JobIDRaw",))} == before
