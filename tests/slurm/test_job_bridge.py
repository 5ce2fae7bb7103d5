"""The job bridge end to end on a real Slurm: SlurmJobs of both API groups become Slurm jobs, run as
their owners, with inputs in and outputs out, and the cluster's partitions are published.

One quick start (cluster ``minikube``, partitions ``cpu`` (unlimited, the default) and ``GPU_Short``
(compute2 only, 30 minutes, one node, feature ``gpu``), accounting on for sacct, memory limits
enforced by cgroups, no bank) serves the whole module. Jobs are applied with the real kubectl 1.32
and a ``user`` kubeconfig of the cluster's job user, as an HPC user would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.devcluster import quickstart_cli
from support.kubectl import kubectl_132, run_kubectl
from support.quickstart import QuickStart, running_quickstart
from support.unix_users import ensure_unix_user
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

DATA = Path(__file__).parent.parent / "integration" / "data" / "wlm"
V1 = "/apis/slurmlink.io/v1/namespaces/default/slurmjobs"
WLM = "/apis/wlm.sylabs.io/v1alpha1/namespaces/default/slurmjobs"
BRIDGE = "/bridge/v1/namespaces/default"
PARTITIONS = (
    "--cluster-name",
    "minikube",
    "--partition",
    "cpu:MaxTime=UNLIMITED",
    "--partition",
    "GPU_Short:Nodes=compute2,MaxTime=30,MaxNodes=1,Features=gpu",
    "--no-bank",
    "--memory-limits",
)
OTHER_USER = "bridge-bob"


@pytest.fixture(scope="module")
def qs() -> Iterator[QuickStart]:
    with running_quickstart(
        "bridge", compute_nodes=2, storage_nodes=1, accounting=True, extra_args=PARTITIONS
    ) as q:
        yield q


def issue(qs: QuickStart, login: str, role: str = "user") -> Path:
    out = qs.dir / f"{login}.kubeconfig"
    if not out.exists():
        result = subprocess.run(
            ["slurmlink", "kubeconfig", "--state-dir", str(qs.dir / "server"), "--role", role,
             "--user", login, "--out", str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def job_user(qs: QuickStart) -> pwd.struct_passwd:
    return pwd.getpwnam(qs.cluster.job_user)


@pytest.fixture(scope="module")
def user_kubeconfig(qs: QuickStart, job_user: pwd.struct_passwd) -> Path:
    return issue(qs, job_user.pw_name)


@pytest.fixture(scope="module")
def user(qs: QuickStart, user_kubeconfig: Path) -> Iterator[httpx.Client]:
    client = qs.client(user_kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="module")
def admin(qs: QuickStart) -> Iterator[httpx.Client]:
    client = qs.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def published(admin: httpx.Client) -> dict[str, Any]:
    """The Partitions, once the bridge has published both."""

    def both() -> dict[str, Any] | None:
        items = admin.get("/apis/slurmlink.io/v1/partitions").json().get("items", [])
        found = {p["metadata"]["name"]: p for p in items}
        return found if {"cpu", "gpu-short"} <= set(found) else None

    return wait_for(both, 120, 1.0, message="the bridge to publish the cluster's partitions")


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_kubectl(kubectl_132(), kubeconfig, *args, input=input)


def job_path(group_path: str, name: str) -> str:
    return f"{group_path}/{name}"


def wait_phase(client: httpx.Client, path: str, phases: set[str], timeout: float = 240) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        r = client.get(path)
        if r.status_code == 200:
            last = r.json()
            if (last.get("status") or {}).get("phase") in phases:
                return last
        return None

    try:
        return wait_for(reached, timeout, 0.5, message=f"{path} to reach {sorted(phases)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {json.dumps(last.get('status'))}") from None


def create(client: httpx.Client, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": "slurmlink.io/v1", "kind": "SlurmJob", "metadata": {"name": name}, "spec": spec}
    r = client.post(V1, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def sacct_comments(qs: QuickStart) -> list[str]:
    """Every job's comment in the accounting (one per Slurm job ever submitted)."""
    result = qs.cluster.run_slurm(
        ["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o", "JobID,Comment"], timeout=30
    )
    assert result.returncode == 0, result.stderr
    return [line.split("|", 1)[1] for line in result.stdout.splitlines() if "|" in line]


@pytest.fixture(scope="module")
def timeout_job(user: httpx.Client, published: dict[str, Any]) -> str:
    """A job that outlives its one-minute limit, started early so the module need not wait for it."""
    create(user, "overtime", {"script": "#!/bin/sh\nsleep 600\n", "resources": {"timeLimit": 1}})
    return job_path(V1, "overtime")


# ---- partitions ------------------------------------------------------------------------------------


def test_partitions_are_published_with_nulls_for_no_limit(
    published: dict[str, Any], user_kubeconfig: Path, timeout_job: str
) -> None:
    cpu, gpu = published["cpu"]["spec"], published["gpu-short"]["spec"]
    assert cpu["slurmName"] == "cpu" and cpu["default"] is True and cpu["cluster"] == "minikube"
    assert cpu["maxTime"] is None and cpu["maxNodesPerJob"] is None
    assert gpu["slurmName"] == "GPU_Short" and gpu["maxTime"] == 30 and gpu["maxNodesPerJob"] == 1
    assert "gpu" in gpu["features"]
    nodes = kubectl(user_kubeconfig, "get", "nodes", "-o", "json")
    assert nodes.returncode == 0, nodes.stderr
    names = {n["metadata"]["name"]: n["metadata"]["labels"] for n in json.loads(nodes.stdout)["items"]}
    assert {"slurm-minikube-cpu", "slurm-minikube-gpu-short"} <= set(names)
    labels = names["slurm-minikube-cpu"]
    assert "wlm.sylabs.io/wall-time" not in labels  # unlimited: no label, never 0 or nan
    assert names["slurm-minikube-gpu-short"]["wlm.sylabs.io/wall-time"] == str(30 * 60)


def test_a_job_needing_more_nodes_than_its_partition_allows_is_refused(
    user: httpx.Client, published: dict[str, Any]
) -> None:
    body = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "SlurmJob",
        "metadata": {"name": "too-wide"},
        "spec": {"script": "#!/bin/sh\ntrue\n", "partition": "GPU_Short", "resources": {"nodes": 2}},
    }
    r = user.post(V1, json=body)
    assert r.status_code == 422, r.text
    assert "spec.resources.nodes" in r.json()["message"] and "at most 1" in r.json()["message"]


# ---- the seed's API, unchanged ---------------------------------------------------------------------


@pytest.fixture()
def docker_home(job_user: pwd.struct_passwd) -> Iterator[Path]:
    """The seed example's hostPath directories, /home/docker/{inputs,outputs}, the job user's."""
    home = Path("/home/docker")
    existed = home.exists()
    (home / "inputs").mkdir(parents=True, exist_ok=True)
    (home / "inputs" / "foo.txt").write_text("foo from the host\n")
    shutil.rmtree(home / "outputs", ignore_errors=True)
    for path in (home, home / "inputs", home / "inputs" / "foo.txt"):
        os.chown(path, job_user.pw_uid, job_user.pw_gid)
    home.chmod(0o755)
    yield home
    if not existed:
        shutil.rmtree(home, ignore_errors=True)


def test_the_seed_example_applies_unchanged_and_succeeds(
    qs: QuickStart, user: httpx.Client, user_kubeconfig: Path, published: dict[str, Any], docker_home: Path,
    job_user: pwd.struct_passwd,
) -> None:  # fmt: skip
    example = DATA / "prepare-and-results.yaml"
    applied = kubectl(user_kubeconfig, "apply", "-f", str(example))
    assert applied.returncode == 0, applied.stderr
    assert "slurmjob.wlm.sylabs.io/prepare-and-results created" in applied.stdout
    path = job_path(WLM, "prepare-and-results")
    job = wait_phase(user, path, {"Succeeded", "Failed", "Cancelled", "Unknown"})
    assert job["status"]["phase"] == "Succeeded", job["status"]
    assert job["status"]["status"] == "Succeeded"
    assert job["status"]["partition"] == "cpu"
    shown = kubectl(user_kubeconfig, "get", "slurmjobs.wlm.sylabs.io", "prepare-and-results")
    assert shown.returncode == 0 and "Succeeded" in shown.stdout, shown.stdout + shown.stderr
    result = docker_home / "outputs" / "bar" / "output.txt"
    assert result.read_text() == "foo from the host\nslurm\n"
    assert result.stat().st_uid == job_user.pw_uid  # written as the job's owner, not as root
    log = user.get(f"{BRIDGE}/slurmjobs/prepare-and-results/log", params={"group": "wlm.sylabs.io"})
    assert log.status_code == 200, log.text
    assert "Hello" in log.text


# ---- slurmlink.io/v1: uploads in, downloads out, as the owner ------------------------------------


def tar_gz(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, name: str) -> dict[str, Any]:
    r = client.post(f"{BRIDGE}/uploads", params={"name": name}, content=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_v1_job_with_uploaded_inputs_runs_as_its_owner_and_its_outputs_download(
    user: httpx.Client, published: dict[str, Any], job_user: pwd.struct_passwd
) -> None:
    archive = tar_gz({"data/a.txt": b"alpha\n", "data/b.txt": b"beta\n"})
    up = upload(user, archive, "inputs.tar.gz")
    assert up["sha256"] == hashlib.sha256(archive).hexdigest() and up["size"] == len(archive)
    script = """#!/bin/bash
#SBATCH --mem=4G
set -e
id -u > results/uid
echo "$GREETING" > results/greeting
cat data/a.txt data/b.txt | tr a-z A-Z > results/upper.txt
"""
    create(
        user,
        "upload-and-download",
        {
            "script": script.replace("set -e\n", "set -e\nmkdir -p results\n"),
            "inputs": [{"upload": up["id"], "to": ".", "unpack": "tar", "sha256": up["sha256"]}],
            "outputs": ["results/**"],
            "environment": [{"name": "GREETING", "value": "hello bridge"}],
        },
    )
    job = wait_phase(
        user, job_path(V1, "upload-and-download"), {"Succeeded", "Failed", "Cancelled", "Unknown"}
    )
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["exitCode"] == 0 and status["slurmState"] == "COMPLETED"
    outputs = {o["path"]: o for o in status["outputs"]}
    assert set(outputs) == {"results/uid", "results/greeting", "results/upper.txt"}
    for path, entry in outputs.items():
        r = user.get(f"{BRIDGE}/slurmjobs/upload-and-download/outputs/{path}")
        assert r.status_code == 200, r.text
        assert hashlib.sha256(r.content).hexdigest() == entry["sha256"] == r.headers["etag"].strip('"')
        assert len(r.content) == entry["size"]
        if path == "results/uid":
            assert r.text.strip() == str(job_user.pw_uid)  # ran as its owner
        if path == "results/upper.txt":
            assert r.text == "ALPHA\nBETA\n"
        if path == "results/greeting":
            assert r.text == "hello bridge\n"


@pytest.mark.parametrize(
    ("archive", "named"),
    [
        (lambda: tar_gz({"../escape": b"x"}), "../escape"),
        (lambda: tar_gz({"/etc/slurmlink-bridge-test": b"x"}), "/etc/slurmlink-bridge-test"),
        (lambda: tar_gz({}, {"etc": "/etc"}), "etc"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_an_unsafe_archive_is_refused_and_nothing_runs(
    qs: QuickStart, user: httpx.Client, published: dict[str, Any], archive: Any, named: str, request: Any
) -> None:
    name = f"unsafe-{request.node.callspec.id}"
    up = upload(user, archive(), "bad.tar.gz")
    create(
        user, name, {"script": "#!/bin/sh\ntouch ran\n", "inputs": [{"upload": up["id"], "unpack": "tar"}]}
    )
    job = wait_phase(user, job_path(V1, name), {"Succeeded", "Failed", "Cancelled", "Unknown"}, 60)
    status = job["status"]
    assert status["phase"] == "Failed" and status["reason"] == "InputsFailed", status
    assert named in status["message"]
    assert "jobId" not in status  # never submitted
    assert not Path("/etc/slurmlink-bridge-test").exists()


def test_outputs_are_never_collected_from_outside_the_job_directory(
    user: httpx.Client, published: dict[str, Any]
) -> None:
    script = """#!/bin/sh
mkdir -p out
echo fine > out/ok.txt
ln -s /etc/passwd out/passwd
ln -s ../../ out/up
"""
    refused = user.post(
        V1,
        json={
            "apiVersion": "slurmlink.io/v1",
            "kind": "SlurmJob",
            "metadata": {"name": "outside"},
            "spec": {"script": script, "outputs": ["../*"]},
        },
    )
    assert refused.status_code == 422 and "cannot leave the job directory" in refused.text
    create(user, "outside", {"script": script, "outputs": ["out/**", "out/up/**", "out/passwd"]})
    job = wait_phase(user, job_path(V1, "outside"), {"Succeeded", "Failed", "Cancelled", "Unknown"})
    assert [o["path"] for o in job["status"]["outputs"]] == ["out/ok.txt"], job["status"]


# ---- how jobs end ------------------------------------------------------------------------------------


def test_a_failing_script_fails_with_its_exit_code(user: httpx.Client, published: dict[str, Any]) -> None:
    create(user, "exit-three", {"script": "#!/bin/sh\necho about to fail\nexit 3\n"})
    job = wait_phase(user, job_path(V1, "exit-three"), {"Succeeded", "Failed", "Cancelled", "Unknown"})
    status = job["status"]
    assert status["phase"] == "Failed" and status["exitCode"] == 3 and status["slurmState"] == "FAILED", (
        status
    )
    log = user.get(f"{BRIDGE}/slurmjobs/exit-three/log")
    assert "about to fail" in log.text


def test_a_job_over_its_memory_ends_out_of_memory(user: httpx.Client, published: dict[str, Any]) -> None:
    hungry = "x = bytearray(400 * 1024 * 1024); [x.__setitem__(i, 1) for i in range(0, len(x), 4096)]"
    script = f'#!/bin/sh\npython3 -c "{hungry}"\necho not reached by a killed job\n'
    create(user, "hungry", {"script": script, "resources": {"memoryPerNode": "100Mi"}})
    job = wait_phase(user, job_path(V1, "hungry"), {"Succeeded", "Failed", "Cancelled", "Unknown"})
    status = job["status"]
    assert status["phase"] == "Failed" and status["reason"] == "OUT_OF_MEMORY", status
    assert status["slurmState"] == "OUT_OF_MEMORY"


def test_deleting_a_job_cancels_its_slurm_job(
    qs: QuickStart, user: httpx.Client, user_kubeconfig: Path, published: dict[str, Any]
) -> None:
    create(user, "to-delete", {"script": "#!/bin/sh\nsleep 600\n"})
    job = wait_phase(user, job_path(V1, "to-delete"), {"Running"})
    job_id = job["status"]["jobId"]
    deleted = kubectl(user_kubeconfig, "delete", "slurmjobs.slurmlink.io", "to-delete", "--timeout=90s")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: user.get(job_path(V1, "to-delete")).status_code == 404, 90, 0.5, message="the object")
    state = (qs.cluster.job_info(job_id) or {}).get("JobState")
    assert state == "CANCELLED", state


def test_spec_cancel_cancels_and_keeps_the_object(user: httpx.Client, published: dict[str, Any]) -> None:
    create(user, "to-cancel", {"script": "#!/bin/sh\nsleep 600\n"})
    wait_phase(user, job_path(V1, "to-cancel"), {"Running"})
    r = user.patch(
        job_path(V1, "to-cancel"),
        json={"spec": {"cancel": True}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    job = wait_phase(user, job_path(V1, "to-cancel"), {"Cancelled", "Failed", "Succeeded"})
    assert job["status"]["phase"] == "Cancelled" and job["status"]["slurmState"] == "CANCELLED"


def test_a_bridge_killed_mid_run_neither_loses_nor_duplicates_jobs(
    qs: QuickStart, user: httpx.Client, published: dict[str, Any]
) -> None:
    names = [f"survivor-{i}" for i in range(6)]
    for name in names:
        create(user, name, {"script": "#!/bin/sh\nsleep 5\necho done\n"})
    # Kill the server while some of these are being staged or submitted.
    wait_for(
        lambda: any((user.get(job_path(V1, n)).json().get("status") or {}).get("jobId") for n in names),
        60,
        0.05,
        message="the first submission",
    )
    pid = int((qs.dir / "run" / "server.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, 0.1, message="the server to die")
    again = quickstart_cli("up", *qs.args, timeout=480)
    assert again.returncode == 0, again.stderr
    uids = {}
    for name in names:  # the same client: it connects again to the restarted server
        job = wait_phase(user, job_path(V1, name), {"Succeeded", "Failed", "Cancelled", "Unknown"})
        assert job["status"]["phase"] == "Succeeded", job["status"]
        uids[name] = job["metadata"]["uid"]
    comments = sacct_comments(qs)
    for name, uid in uids.items():
        assert comments.count(f"slurmlink:{uid}") == 1, (name, comments)


def test_suspend_keeps_a_job_back_and_holds_it_in_slurm(
    qs: QuickStart, user: httpx.Client, published: dict[str, Any]
) -> None:
    path = job_path(V1, "held")
    merge = {"Content-Type": "application/merge-patch+json"}
    # Not submitted while suspended.
    create(user, "held", {"script": "#!/bin/sh\n#SBATCH --begin=now+1hour\ntrue\n", "suspend": True})
    job = wait_phase(user, path, {"Pending"}, 30)
    wait_for(
        lambda: "suspended" in (user.get(path).json().get("status") or {}).get("message", ""),
        30,
        0.2,
        message="the bridge to say the job is suspended",
    )
    assert "jobId" not in user.get(path).json()["status"]
    # Released: submitted, and pending in Slurm until its begin time.
    assert user.patch(path, json={"spec": {"suspend": False}}, headers=merge).status_code == 200
    job = wait_phase(user, path, {"Queued"}, 60)
    job_id = job["status"]["jobId"]
    wait_for(
        lambda: (qs.cluster.job_info(job_id) or {}).get("Reason") == "BeginTime", 30, 0.5, message="BeginTime"
    )
    # Suspended again while pending: held in Slurm, then released.
    assert user.patch(path, json={"spec": {"suspend": True}}, headers=merge).status_code == 200
    wait_for(
        lambda: (qs.cluster.job_info(job_id) or {}).get("Reason") == "JobHeldUser", 30, 0.5, message="held"
    )
    assert user.patch(path, json={"spec": {"suspend": False}}, headers=merge).status_code == 200
    wait_for(
        lambda: (qs.cluster.job_info(job_id) or {}).get("Reason") == "BeginTime", 30, 0.5, message="released"
    )
    assert user.delete(path).status_code in (200, 202)
    wait_for(
        lambda: (qs.cluster.job_info(job_id) or {}).get("JobState") == "CANCELLED", 60, 0.5, message="cancel"
    )


def test_a_finished_job_goes_after_its_ttl_with_its_directory(
    user: httpx.Client, published: dict[str, Any]
) -> None:
    # Long enough to see it finished (polled every 0.5 s), short enough not to wait long.
    create(user, "short-lived", {"script": "#!/bin/sh\ntrue\n", "ttlSecondsAfterFinished": 6})
    path = job_path(V1, "short-lived")
    job = wait_phase(user, path, {"Succeeded", "Failed"})
    assert job["status"]["phase"] == "Succeeded"
    directory = Path(job["status"]["workDir"])
    assert directory.is_dir()
    wait_for(lambda: user.get(path).status_code == 404, 60, 0.5, message="the object to expire")
    wait_for(lambda: not directory.exists(), 30, 0.2, message="its directory to be removed")


def test_the_seed_kind_takes_slurm_memory_units(
    user: httpx.Client, user_kubeconfig: Path, published: dict[str, Any]
) -> None:
    manifest = """apiVersion: wlm.sylabs.io/v1alpha1
kind: SlurmJob
metadata:
  name: four-gigs
spec:
  batch: |
    #!/bin/sh
    #SBATCH --mem=4G
    #SBATCH --nodes=1
    echo memory fine
  nodeSelector:
    kubernetes.io/hostname: slurm-minikube-cpu
"""
    applied = kubectl(user_kubeconfig, "apply", "-f", "-", input=manifest)
    assert applied.returncode == 0, applied.stderr
    job = wait_phase(user, job_path(WLM, "four-gigs"), {"Succeeded", "Failed", "Cancelled", "Unknown"})
    assert job["status"]["status"] == "Succeeded", job["status"]


# ---- who sees what ------------------------------------------------------------------------------


def test_another_user_cannot_read_a_job_its_log_or_outputs(qs: QuickStart, published: dict[str, Any]) -> None:
    ensure_unix_user(OTHER_USER)
    owner = qs.client(issue(qs, qs.cluster.job_user))
    other = qs.client(issue(qs, OTHER_USER))
    try:
        wait_phase(owner, job_path(V1, "exit-three"), {"Failed"})
        assert other.get(job_path(V1, "exit-three")).status_code in (403, 404)
        assert other.get(f"{BRIDGE}/slurmjobs/exit-three/log").status_code in (403, 404)
        assert other.get(f"{BRIDGE}/slurmjobs/upload-and-download/outputs/results/uid").status_code in (
            403,
            404,
        )
        names = {j["metadata"]["name"] for j in other.get(V1).json()["items"]}
        assert "exit-three" not in names
    finally:
        owner.close()
        other.close()


def test_an_admin_submits_for_a_named_user_and_never_for_nobody(
    admin: httpx.Client, published: dict[str, Any], job_user: pwd.struct_passwd
) -> None:
    owned = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "SlurmJob",
        "metadata": {
            "name": "on-behalf",
            "labels": {"slurmlink.io/owner-uid": str(job_user.pw_uid)},
            "annotations": {"slurmlink.io/owner": job_user.pw_name},
        },
        "spec": {"script": "#!/bin/sh\nmkdir -p out\nid -u > out/uid\n", "outputs": ["out/uid"]},
    }
    assert admin.post(V1, json=owned).status_code == 201
    job = wait_phase(admin, job_path(V1, "on-behalf"), {"Succeeded", "Failed", "Cancelled", "Unknown"})
    assert job["status"]["phase"] == "Succeeded", job["status"]
    uid = admin.get(f"{BRIDGE}/slurmjobs/on-behalf/outputs/out/uid")
    assert uid.status_code == 200 and uid.text.strip() == str(job_user.pw_uid)
    ownerless = {**owned, "metadata": {"name": "nobodys"}}
    assert admin.post(V1, json=ownerless).status_code == 201
    job = wait_phase(admin, job_path(V1, "nobodys"), {"Succeeded", "Failed", "Cancelled", "Unknown"}, 60)
    assert job["status"]["phase"] == "Failed" and job["status"]["reason"] == "NoOwner", job["status"]
    assert "jobId" not in job["status"]


def test_a_job_over_its_time_limit_fails_with_reason_timeout(
    qs: QuickStart, published: dict[str, Any], timeout_job: str
) -> None:
    client = qs.client(issue(qs, qs.cluster.job_user))
    try:
        job = wait_phase(client, timeout_job, {"Succeeded", "Failed", "Cancelled", "Unknown"}, 300)
        status = job["status"]
        assert status["phase"] == "Failed" and status["reason"] == "TIMEOUT", status
        assert status["slurmState"] == "TIMEOUT"
    finally:
        client.close()
