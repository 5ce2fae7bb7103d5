"""Slurm's stock ``burst_buffer/datawarp`` plugin against slurmlink (``slurmlink dw-wlm-cli``).

A quick start of its own (``--burst-buffer-plugin datawarp``: 2 compute nodes, 3 storage nodes, its own
state dir and free ports) runs real jobs written for Cray DataWarp: a ``#DW jobdw`` scratch buffer in
the job's ``$DW_JOB_STRIPED``, a persistent buffer made and destroyed by ``#BB`` jobs (which Slurm
itself interprets) that Slurm still knows after a restart, and requests refused at sbatch.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from slurmlink.slurm.devcluster import DevCluster
from slurmlink.supervise import running_pid, stop_pid
from support.devcluster import quickstart_cli
from support.quickstart import QuickStart, finish_job, run_job, running_quickstart, submit_job
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.storage, pytest.mark.timeout(900)]

GiB = 1 << 30
NS = "slurm"
SL = "/apis/slurmlink.io/v1"
DWS = "/apis/dataworkflowservices.github.io/v1alpha7"
COMPUTES = ["compute1", "compute2"]
_scripts = itertools.count(1)


@pytest.fixture(scope="module")
def qs() -> Iterator[QuickStart]:
    with running_quickstart("slurmlink-dw-", extra_args=("--burst-buffer-plugin", "datawarp")) as quick:
        cluster = quick.cluster
        # The plugin reads the pools at slurmctld's start and every 30 s after.
        wait_for(lambda: _default_pool_total(cluster) > 0, 90, 0.5, message="Slurm to know pool gluster")
        yield quick


@pytest.fixture(scope="module")
def api(qs: QuickStart) -> Iterator[httpx.Client]:
    with qs.client() as client:
        yield client


def _burst(cluster: DevCluster) -> str:
    return cluster.run_slurm(["scontrol", "show", "burst"], timeout=10).stdout


def _default_pool_total(cluster: DevCluster) -> int:
    match = re.search(r"Name=datawarp DefaultPool=gluster .*?TotalSpace=(\d+)", _burst(cluster))
    return int(match.group(1)) if match else 0


_submit = submit_job
_job = run_job
_finish = finish_job


def _items(api: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = api.get(path)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _pool_is_whole(api: httpx.Client, name: str = "gluster") -> bool:
    status = api.get(f"{SL}/storagepools/{name}").json().get("status") or {}
    return bool(status) and status.get("freeGranules") == status.get("totalGranules")


def _user(qs: QuickStart) -> str:
    user = qs.cluster.job_user
    return f"{user}({pwd.getpwnam(user).pw_uid})"


def test_jobdw_scratch_buffer_is_shared_by_the_nodes_in_dw_job_striped(
    qs: QuickStart, api: httpx.Client
) -> None:
    cluster = qs.cluster
    flag = cluster.state_dir / "jobs" / f"release-{next(_scripts)}"
    job = _job(
        qs,
        rf"""
#SBATCH -N2 --time=5
#DW jobdw capacity=1GiB access_mode=striped type=scratch
srun sh -c 'touch "$DW_JOB_STRIPED/$(hostname)"'
echo "striped=$DW_JOB_STRIPED files=$(ls "$DW_JOB_STRIPED" | tr "\n" ,)"
echo "fs=$(findmnt -n -o FSTYPE --target "$DW_JOB_STRIPED") uid=$(stat -c %u "$DW_JOB_STRIPED")"
while [ ! -e {flag} ]; do sleep 0.2; done
""",
    )
    try:
        cluster.wait_for_job(job, ("RUNNING",), timeout=240)
        # What Slurm reads from slurmlink (GetSysState), and what it makes of it.
        dw_wlm_cli = str(cluster.etc_dir / "dw_wlm_cli")
        listed = subprocess.run(
            [dw_wlm_cli, "--function", "show_instances"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        sessions = subprocess.run(
            [dw_wlm_cli, "--function", "show_sessions"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        (session,) = [s for s in json.loads(sessions.stdout)["sessions"] if s["token"] == job]
        assert session["id"] == int(job) and session["owner"] == pwd.getpwnam(cluster.job_user).pw_uid
        (instance,) = [i for i in json.loads(listed.stdout)["instances"] if i["links"]["session"] == int(job)]
        assert instance["capacity"]["bytes"] == GiB, listed.stdout
        shown = _burst(cluster)
        assert re.search(rf"JobID={job} CreateTime=\S+ Pool=gluster Size=1GiB", shown), shown
        assert f"UserID={_user(qs)} Used=1GiB" in shown, shown
    finally:
        flag.touch()
    out = _finish(qs, job)
    path = f"/mnt/slurmlink/bb{job}/job/striped"
    assert f"striped={path} files=compute1,compute2," in out, out
    assert f"fs=fuse.glusterfs uid={pwd.getpwnam(cluster.job_user).pw_uid}" in out, out
    # Torn down: no Workflow, storage or Slurm record left; the capacity is back.
    wait_for(
        lambda: (
            not [
                w
                for w in _items(api, f"{DWS}/namespaces/{NS}/workflows")
                if w["metadata"]["name"] == f"bb{job}"
            ]
            and not [
                a
                for a in _items(api, f"{SL}/namespaces/{NS}/storageallocations")
                if a["metadata"]["name"].startswith(f"bb{job}-")
            ]
        ),
        90,
        0.5,
        message="the job's buffer to go",
    )
    wait_for(lambda: _pool_is_whole(api), 60, 0.5, message="the capacity to come back")
    assert f"JobID={job} " not in _burst(qs.cluster)


def test_stage_in_and_stage_out_through_the_datawarp_plugin(qs: QuickStart) -> None:
    """DataWarp's stage_in/stage_out under Slurm's own plugin: copied by slurmlink as the job's user."""
    user = pwd.getpwnam(qs.cluster.job_user)
    area = qs.cluster.state_dir / "jobs" / f"dw-stage-{next(_scripts)}"
    area.mkdir()
    (area / "in.txt").write_text("from the parallel file system\n")
    for path in (area, area / "in.txt"):
        os.chown(path, user.pw_uid, user.pw_gid)
    job = _job(
        qs,
        f"""
#SBATCH -N1 --time=5
#DW jobdw capacity=1GiB access_mode=striped type=scratch pool=gluster
#DW stage_in source={area}/in.txt destination=$DW_JOB_STRIPED/in.txt type=file
#DW stage_out source=$DW_JOB_STRIPED/out.txt destination={area}/out.txt type=file
cat "$DW_JOB_STRIPED/in.txt"
echo "written in the buffer" > "$DW_JOB_STRIPED/out.txt"
""",
    )
    out = _finish(qs, job, timeout=300)
    assert "from the parallel file system" in out, out
    assert (area / "out.txt").read_text() == "written in the buffer\n"
    assert (area / "out.txt").stat().st_uid == user.pw_uid


def test_bb_persistent_buffer_created_listed_used_kept_over_a_restart_and_destroyed(
    qs: QuickStart, api: httpx.Client
) -> None:
    cluster = qs.cluster
    create = _job(qs, "#BB create_persistent name=dwkeep capacity=1GiB access=striped type=scratch\ntrue")
    _finish(qs, create)
    psi = api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/dwkeep")
    assert psi.status_code == 200, psi.text
    listed = re.compile(
        rf"Name=dwkeep CreateTime=\S+ Pool=gluster Size=1GiB State=allocated UserID={re.escape(_user(qs))}"
    )
    used = f"UserID={_user(qs)} Used=1GiB"
    shown = _burst(cluster)
    assert listed.search(shown) and used in shown, shown

    write = _job(
        qs, '#DW persistentdw name=dwkeep\necho "data from $SLURM_JOB_ID" > "$DW_PERSISTENT_STRIPED_dwkeep/f"'
    )
    _finish(qs, write)

    # slurmctld keeps no buffers of its own: after a restart it learns them from show_sessions/_instances.
    pid = running_pid(cluster.run_dir / "slurmctld.pid", lambda argv: str(cluster.slurm_conf) in argv)
    assert pid is not None
    stop_pid(pid, "slurmctld", 30, lambda _msg: None)
    again = quickstart_cli("up", *qs.args, timeout=480)
    assert again.returncode == 0, again.stderr
    wait_for(lambda: bool(listed.search(_burst(cluster))), 90, 0.5, message="Slurm to list dwkeep again")

    read = _job(qs, '#DW persistentdw name=dwkeep\ncat "$DW_PERSISTENT_STRIPED_dwkeep/f"')
    assert f"data from {write}" in _finish(qs, read)

    destroy = _job(qs, "#BB destroy_persistent name=dwkeep\ntrue")
    _finish(qs, destroy)
    assert api.get(f"{DWS}/namespaces/{NS}/persistentstorageinstances/dwkeep").status_code == 404
    wait_for(lambda: "dwkeep" not in _burst(cluster), 60, 0.5, message="Slurm to drop dwkeep")
    wait_for(lambda: _pool_is_whole(api), 60, 0.5, message="the persistent buffer's capacity to come back")
    leftovers = [w["metadata"]["name"] for w in _items(api, f"{DWS}/namespaces/{NS}/workflows")]
    assert not [name for name in leftovers if name.startswith(("bbp-", "bbd-"))], leftovers


def test_requests_the_site_cannot_serve_are_refused_at_sbatch(qs: QuickStart) -> None:
    ours = {
        "#DW jobdw capacity=100GiB access_mode=striped type=scratch": ["capacity=100GiB", "pool gluster"],
        "#DW jobdw capacity=1GiB access_mode=striped type=scratch pool=xfs": ["pool=xfs", "gluster"],
        "#DW jobdw capacity=1GiB access_mode=striped type=cache": ["type=cache", "not supported"],
    }
    for directive, words in ours.items():
        result = _submit(qs, f"{directive}\ntrue")
        assert result.returncode != 0, directive
        assert "burst_buffer/datawarp: " in result.stderr, result.stderr
        message = result.stderr.split("burst_buffer/datawarp: ", 1)[1].splitlines()[0]
        for word in words:
            assert word in message, (directive, message)
    # A pool Slurm was never told of is refused by Slurm itself, before it asks slurmlink.
    unknown = _submit(qs, "#DW jobdw capacity=1GiB access_mode=striped type=scratch pool=nosuch\ntrue")
    assert unknown.returncode != 0 and "Burst Buffer request invalid" in unknown.stderr, unknown.stderr
