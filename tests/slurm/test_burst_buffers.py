"""Burst buffers on the real multi-node quick start: 2 compute nodes, 3 storage nodes, real Slurm jobs.

Jobs ask for buffers with ``#DW`` directives and get real file systems: an XFS of the asked size per
compute node, persistent buffers that outlive jobs, directives the site cannot serve refused at
sbatch, jobs waiting while the pool is full, drained nodes skipped, agents and the server killed in
the middle of Setup without losing or leaking capacity. One quick start serves the module.

Slurm 22.05's burst_buffer/lua requires ``pool=`` with ``capacity=``, so the jobs name the pool.
"""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.slurm.devcluster import run_in_node
from support.devcluster import quickstart_cli
from support.quickstart import QuickStart, finish_job, run_job, slurm_pool_total, submit_job
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.storage, pytest.mark.timeout(900)]

GiB = 1 << 30
NS = "slurm"
SL = "/apis/slurmlink.io/v1"
DWS = "/apis/dataworkflowservices.github.io/v1alpha7"
COMPUTES = ["compute1", "compute2"]
STORAGE_NODES = ["storage1", "storage2", "storage3"]
_scripts = itertools.count(1)


@pytest.fixture(scope="module")
def qs(bb_quickstart: QuickStart) -> QuickStart:
    return bb_quickstart


@pytest.fixture(scope="module")
def api(qs: QuickStart) -> Iterator[httpx.Client]:
    with qs.client() as client:
        yield client


_submit = submit_job
_job = run_job
_finish = finish_job
_slurm_pool_total = slurm_pool_total


def _items(api: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = api.get(path)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _of_job(items: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [o for o in items if o["metadata"]["name"].startswith(f"bb{job_id}-")]


def _pool(api: httpx.Client, name: str = "xfs") -> dict[str, Any]:
    response = api.get(f"{SL}/storagepools/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json().get("status") or {})


def _job_gone_everywhere(api: httpx.Client, job_id: str) -> bool:
    return not any(
        _of_job(_items(api, path), job_id)
        for path in (
            f"{SL}/namespaces/{NS}/storageallocations",
            f"{DWS}/namespaces/{NS}/clientmounts",
            f"{DWS}/namespaces/{NS}/servers",
        )
    )


def _pool_is_whole(api: httpx.Client) -> bool:
    status = _pool(api)
    return bool(status) and status.get("freeGranules") == status.get("totalGranules")


def _mounted_buffers(qs: QuickStart, name: str) -> list[str]:
    (node,) = [n for n in qs.cluster.nodes if n.name == name]
    found = run_in_node(node, ["findmnt", "-rn", "-o", "TARGET"], timeout=30).stdout.split()
    return [target for target in found if target.startswith("/mnt/slurmlink/")]


def _job_uid(qs: QuickStart) -> int:
    return pwd.getpwnam(qs.cluster.job_user).pw_uid


# ---- job buffers ---------------------------------------------------------------------------------------


def test_xfs_buffer_per_compute_node_of_the_asked_size_then_all_gone(
    qs: QuickStart, api: httpx.Client
) -> None:
    job = _job(
        qs,
        r"""
#SBATCH -N2 --time=5
#DW jobdw type=xfs capacity=1GiB name=scratch pool=xfs
srun -l sh -c 'd=$DW_JOB_scratch; echo "host=$(hostname) path=$d uid=$(stat -c %u "$d") \
  fs=$(findmnt -n -o FSTYPE --target "$d") size=$(findmnt -bn -o SIZE --target "$d")"; \
  touch "$d/$(hostname)" && echo "files=$(ls "$d" | tr "\n" ,)"'
echo "env DW_JOB_XFS=$DW_JOB_XFS DW_JOBS=$DW_JOBS"
""",
    )
    out = _finish(qs, job)
    rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in out.splitlines() if "host=" in line]
    assert sorted(r["host"] for r in rows) == COMPUTES, out
    path = f"/mnt/slurmlink/bb{job}/job/scratch"
    for row in rows:
        assert row["path"] == path and row["fs"] == "xfs" and int(row["uid"]) == _job_uid(qs), out
        assert 0.8 * GiB < int(row["size"]) <= GiB, out  # XFS keeps part of the device for its log
    files = [line.split("files=", 1)[1] for line in out.splitlines() if "files=" in line]
    assert sorted(files) == ["compute1,", "compute2,"], out  # each node its own file system
    assert f"DW_JOB_XFS={path} DW_JOBS=scratch:{path}" in out

    wait_for(lambda: _job_gone_everywhere(api, job), 60, 0.5, message="the job's storage objects to go")
    wait_for(lambda: _pool_is_whole(api), 60, 0.5, message="the capacity to come back")
    for node in COMPUTES:
        assert _mounted_buffers(qs, node) == []
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert [line for line in loops.splitlines() if str(qs.dir) in line and f"/slurm-bb{job}-" in line] == []


def test_dir_buffer_is_a_directory_of_the_storage_pool_on_each_node(
    qs: QuickStart, api: httpx.Client
) -> None:
    job = _job(
        qs,
        r"""
#SBATCH -N2 --time=5
#DW jobdw type=dir capacity=1GiB name=plain pool=dir
srun -l sh -c 'd=$DW_JOB_plain; touch "$d/$(hostname)" && echo "host=$(hostname) uid=$(stat -c %u "$d") \
  files=$(ls "$d" | tr "\n" ,) mounted=$(findmnt -n -o TARGET --target "$d")"'
""",
    )
    out = _finish(qs, job)
    rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in out.splitlines() if "host=" in line]
    assert sorted(r["host"] for r in rows) == COMPUTES, out
    for row in rows:
        assert int(row["uid"]) == _job_uid(qs) and row["files"] == row["host"] + ",", out
        assert row["mounted"] == f"/mnt/slurmlink/bb{job}/job/plain", out  # a mount of its own
    wait_for(lambda: _job_gone_everywhere(api, job), 60, 0.5, message="the job's storage objects to go")
    for node in COMPUTES:
        assert _mounted_buffers(qs, node) == []


def test_directives_the_site_cannot_serve_are_refused_at_sbatch(qs: QuickStart) -> None:
    cases = {
        "#DW jobdw type=lustre capacity=1GiB name=big pool=xfs": ["lustre", "xfs", "dir", "raw"],
        "#DW jobdw type=xfs capacity=100GiB name=huge pool=xfs": ["100GiB", "xfs"],
        "#DW jobdw type=xfs capacity=1GiB name=a1 pool=dir": ["dir", "xfs"],
        "#DW copy_in source=/etc/hostname destination=$DW_JOB_x": ["$DW_JOB_x names no burst buffer"],
        "#DW swap 10GiB": ["swap is not supported"],
        "#DW persistentdw name=missing": ["missing"],
    }
    for directive, words in cases.items():
        result = _submit(qs, f"{directive}\ntrue")
        assert result.returncode != 0, directive
        assert "burst_buffer/lua:" in result.stderr, result.stderr
        message = result.stderr.split("burst_buffer/lua:", 1)[1].splitlines()[0]
        for word in words:
            assert word in message, (directive, message)


# ---- persistent buffers --------------------------------------------------------------------------------


def test_persistent_buffer_created_written_read_and_destroyed(qs: QuickStart, api: httpx.Client) -> None:
    cluster = qs.cluster
    create = _job(qs, "#DW create_persistent type=xfs capacity=1GiB name=keep pool=xfs\ntrue")
    _finish(qs, create)
    wait_for(
        lambda: (
            (
                api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep").json().get("status") or {}
            ).get("state")
            == "Active"
        ),
        60,
        message="the persistent buffer to be active",
    )
    write = _job(qs, "#DW persistentdw name=keep\necho hello-from-$SLURM_JOB_ID > $DW_PERSISTENT_keep/data")
    _finish(qs, write)
    read = _job(qs, "#DW persistentdw name=keep\ncat $DW_PERSISTENT_keep/data")
    assert f"hello-from-{write}" in _finish(qs, read)

    flag = cluster.state_dir / "jobs" / f"release-{next(_scripts)}"
    user = _job(qs, f"#DW persistentdw name=keep\nwhile [ ! -e {flag} ]; do sleep 0.2; done")
    cluster.wait_for_job(user, ("RUNNING",), timeout=120)
    refused = _submit(qs, "#DW destroy_persistent name=keep\ntrue")
    assert refused.returncode != 0 and f"in use by job {user}" in refused.stderr, refused.stderr

    shown = cluster.run_as_job_user(["scontrol", "show", "bbstat", "buffers"], timeout=30).stdout
    (row,) = [line.split() for line in shown.splitlines() if line.startswith("keep ")]
    assert row[1:3] == ["xfs", "1GiB"] and row[3] == f"{cluster.job_user}({_job_uid(qs)})", shown
    assert row[-1] == user, shown

    flag.touch()
    _finish(qs, user)
    destroy = _job(qs, "#DW destroy_persistent name=keep\ntrue")
    _finish(qs, destroy)
    assert api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/keep").status_code == 404
    wait_for(lambda: _pool_is_whole(api), 60, 0.5, message="the persistent buffer's capacity to come back")


# ---- capacity ------------------------------------------------------------------------------------------


def test_full_pool_makes_jobs_wait_and_drained_nodes_get_nothing(qs: QuickStart, api: httpx.Client) -> None:
    cluster = qs.cluster
    admin = ["--kubeconfig", str(qs.admin)]
    drained = subprocess.run(
        ["python3", "-m", "slurmlink.cli.main", "storage", "drain", "storage1", *admin],
        capture_output=True,
        text=True,
        check=False,
    )
    assert drained.returncode == 0, drained.stderr
    try:
        wait_for(lambda: _pool(api).get("freeGranules") == 6, 60, 0.5, message="storage1 out of the pool")
        flag = cluster.state_dir / "jobs" / f"release-{next(_scripts)}"
        hold = f"while [ ! -e {flag} ]; do sleep 0.2; done"
        holders = [_job(qs, f"#DW jobdw type=xfs capacity=3GiB name=big pool=xfs\n{hold}") for _ in range(2)]
        for job in holders:
            cluster.wait_for_job(job, ("RUNNING",), timeout=180)
        placed = {
            a["spec"]["node"]
            for job in holders
            for a in _of_job(_items(api, f"{SL}/namespaces/{NS}/storageallocations"), job)
        }
        assert placed == {"storage2", "storage3"}

        waiting = _job(qs, "#DW jobdw type=xfs capacity=3GiB name=big pool=xfs\ntrue")

        def waits_for_capacity() -> dict[str, str] | None:
            info = cluster.job_info(waiting) or {}
            return info if info.get("Reason") == "BurstBufferResources" else None

        wait_for(waits_for_capacity, 90, 0.5, message="the third job to wait for burst-buffer capacity")
        flag.touch()
        for job in holders:
            _finish(qs, job)
        _finish(qs, waiting, timeout=300)
    finally:
        subprocess.run(
            ["python3", "-m", "slurmlink.cli.main", "storage", "undrain", "storage1", *admin],
            capture_output=True,
            check=False,
        )
    wait_for(
        lambda: _pool_is_whole(api) and _pool(api).get("freeGranules") == 9, 90, 0.5, message="whole pool"
    )


# ---- failures in the middle of Setup -------------------------------------------------------------------


def _kill_during_setup(qs: QuickStart, api: httpx.Client, pid_of: Any) -> None:
    """Submit a 2-node xfs job; kill -9 what ``pid_of(allocations)`` names once its allocations exist and
    are not all Ready; bring it back with ``quickstart up``; the job completes and nothing is left."""
    job = _job(
        qs,
        "#SBATCH -N2\n#DW jobdw type=xfs capacity=1GiB name=sc pool=xfs\n"
        "srun touch $DW_JOB_sc/ok && srun ls $DW_JOB_sc",
    )
    allocations = wait_for(
        lambda: _of_job(_items(api, f"{SL}/namespaces/{NS}/storageallocations"), job),
        120,
        0.05,
        message="placement",
    )
    pid = pid_of(allocations)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    up = quickstart_cli("up", *qs.where, timeout=480)
    assert up.returncode == 0, up.stderr
    out = _finish(qs, job, timeout=300)
    assert out.count("ok") == 2, out
    wait_for(lambda: _job_gone_everywhere(api, job), 90, 0.5, message="the job's storage objects to go")
    wait_for(lambda: _pool_is_whole(api), 90, 0.5, message="no capacity leaked")
    assert len(_items(api, f"{SL}/namespaces/{NS}/storageallocations")) == 0


def test_kill_storage_agent_during_setup(qs: QuickStart, api: httpx.Client) -> None:
    _kill_during_setup(qs, api, lambda allocs: qs.agent_pid(allocs[0]["spec"]["node"]))


def test_kill_gateway_during_setup(qs: QuickStart, api: httpx.Client) -> None:
    """The Lua's setup call dies with the gateway; it is sent again to the restarted one."""
    _kill_during_setup(
        qs, api, lambda _allocs: int((qs.cluster.state_dir / "run" / "gateway.pid").read_text())
    )


def test_kill_server_during_setup(qs: QuickStart, api: httpx.Client) -> None:
    _kill_during_setup(qs, api, lambda _allocs: int((qs.dir / "run" / "server.pid").read_text()))


# ---- what users see ------------------------------------------------------------------------------------


def test_user_kubeconfig_sees_only_their_buffers(qs: QuickStart, api: httpx.Client, tmp_path: Path) -> None:
    cluster = qs.cluster
    user_config = tmp_path / "user.kubeconfig"
    issued = subprocess.run(
        [
            "python3",
            "-m",
            "slurmlink.cli.main",
            "kubeconfig",
            "--user",
            cluster.job_user,
            "--role",
            "user",
            "--state-dir",
            str(qs.dir / "server"),
            "--out",
            str(user_config),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert issued.returncode == 0, issued.stderr
    other = {
        "metadata": {"name": "someone-else", "namespace": NS},
        "spec": {
            "node": "nowhere",
            "capacity": GiB,
            "index": 0,
            "fsType": "xfs",
            "pool": "xfs",
            "lifetime": "job",
            "fileSystem": "someone-else",
            "userID": 4242,
            "groupID": 4242,
        },
    }
    assert (
        api.post(
            f"{SL}/namespaces/{NS}/storageallocations",
            json={**other, "metadata": {**other["metadata"], "finalizers": []}},
        ).status_code
        == 201
    )
    theirs = {
        "metadata": {"name": "someone-elses-copy", "namespace": NS},
        "spec": {
            "source": {"path": "/srv/a"},
            "destination": {"path": "b", "allocation": {"kind": "StorageAllocation", "name": "someone-else"}},
            "direction": "in",
            "node": "nowhere",
            "userID": 4242,
            "groupID": 4242,
        },
    }
    assert api.post(f"{SL}/namespaces/{NS}/datamovements", json=theirs).status_code == 201
    flag = cluster.state_dir / "jobs" / f"release-{next(_scripts)}"
    job = _job(
        qs,
        "#DW jobdw type=xfs capacity=1GiB name=mine pool=xfs\n"
        "#DW copy_in source=/etc/hostname destination=$DW_JOB_mine/\n"
        f"while [ ! -e {flag} ]; do sleep 0.2; done",
    )
    try:
        cluster.wait_for_job(job, ("RUNNING",), timeout=180)
        with qs.client(user_config) as mine:
            names = {o["metadata"]["name"] for o in _items(mine, f"{SL}/namespaces/{NS}/storageallocations")}
            assert names and all(n.startswith(f"bb{job}-") for n in names), names
            clientmounts = _items(mine, f"{DWS}/namespaces/{NS}/clientmounts")
            assert clientmounts and all(c["metadata"]["name"].startswith(f"bb{job}-") for c in clientmounts)
            copies = [m["metadata"]["name"] for m in _items(mine, f"{SL}/namespaces/{NS}/datamovements")]
            assert copies == [f"bb{job}-1-0"], copies  # their own job's copy, not someone else's
            denied = mine.get(f"{SL}/namespaces/{NS}/datamovements/someone-elses-copy")
            assert denied.status_code in (403, 404), denied.text
    finally:
        flag.touch()
        api.delete(f"{SL}/namespaces/{NS}/storageallocations/someone-else")
        api.delete(f"{SL}/namespaces/{NS}/datamovements/someone-elses-copy")
    _finish(qs, job)


# ---- shared buffers and the DataWarp grammar -------------------------------------------------------------


def test_gluster_buffer_is_shared_by_the_nodes_and_spread_over_bricks(
    qs: QuickStart, api: httpx.Client
) -> None:
    cluster = qs.cluster
    flag = cluster.state_dir / "jobs" / f"release-{next(_scripts)}"
    job = _job(
        qs,
        rf"""
#SBATCH -N2 --time=5
#DW jobdw type=gluster capacity=3GiB name=shared pool=gluster
srun sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo x > "$DW_JOB_shared/$(hostname)-$i"; done'
srun -l sh -c 'echo "host=$(hostname) count=$(ls "$DW_JOB_shared" | wc -l) \
  fs=$(findmnt -n -o FSTYPE --target "$DW_JOB_shared") uid=$(stat -c %u "$DW_JOB_shared")"'
while [ ! -e {flag} ]; do sleep 0.2; done
""",
    )
    try:
        cluster.wait_for_job(job, ("RUNNING",), timeout=240)
        out_file = cluster.state_dir / "jobs" / f"{job}.out"
        wait_for(
            lambda: out_file.exists() and out_file.read_text().count("host=") == 2,
            120,
            0.5,
            message="both nodes to report",
        )
        allocations = _of_job(_items(api, f"{SL}/namespaces/{NS}/storageallocations"), job)
        assert sorted(a["spec"]["node"] for a in allocations) == STORAGE_NODES  # one brick per storage node
        per_brick = {}
        for alloc in allocations:
            brick = alloc["status"]["brick"]
            (node,) = [n for n in cluster.nodes if n.name == alloc["spec"]["node"]]
            listed = run_in_node(node, ["ls", "-A", brick["path"]], timeout=30).stdout.split()
            per_brick[node.name] = len([f for f in listed if f.startswith("compute")])
        assert sum(per_brick.values()) == 24 and sum(1 for n in per_brick.values() if n) >= 2, per_brick
    finally:
        flag.touch()
    out = _finish(qs, job)
    rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in out.splitlines() if "host=" in line]
    assert sorted(r["host"] for r in rows) == COMPUTES and {r["count"] for r in rows} == {"24"}, out
    assert {r["fs"] for r in rows} == {"fuse.glusterfs"} and {int(r["uid"]) for r in rows} == {_job_uid(qs)}
    wait_for(lambda: _job_gone_everywhere(api, job), 90, 0.5, message="the gluster buffer to go")


def test_datawarp_striped_is_shared_and_private_is_per_node(qs: QuickStart, api: httpx.Client) -> None:
    striped = _job(
        qs,
        r"""
#SBATCH -N2 --time=5
#DW jobdw capacity=1GiB access_mode=striped type=scratch pool=gluster
srun sh -c 'touch "$DW_JOB_STRIPED/$(hostname)"'
echo "striped=$DW_JOB_STRIPED files=$(ls "$DW_JOB_STRIPED" | tr "\n" ,)"
""",
    )
    out = _finish(qs, striped)
    assert f"striped=/mnt/slurmlink/bb{striped}/job/striped files=compute1,compute2," in out, out

    private = _job(
        qs,
        r"""
#SBATCH -N2 --time=5
#DW jobdw capacity=1GiB access_mode=private type=scratch pool=xfs
srun -l sh -c 'touch "$DW_JOB_PRIVATE/$(hostname)"; echo "host=$(hostname) \
  fs=$(findmnt -n -o FSTYPE --target "$DW_JOB_PRIVATE") files=$(ls "$DW_JOB_PRIVATE" | tr "\n" ,)"'
""",
    )
    out = _finish(qs, private)
    rows = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in out.splitlines() if "host=" in line]
    assert sorted(r["host"] for r in rows) == COMPUTES
    for row in rows:
        assert row["fs"] == "xfs" and row["files"] == row["host"] + ",", out
    wait_for(lambda: _job_gone_everywhere(api, private) and _pool_is_whole(api), 90, 0.5, message="all freed")
