"""``slurmlink sj upload|download`` and ``slurmlink logs sj`` against a real ``slurmlink serve --bridge``.

No Slurm runs here: the server's bridge is pointed at a slurm.conf that does not exist, so it stages a
job (its directory is made as the owner, inputs copied in) and then waits for Slurm forever. What a
finished job would leave behind is made by hand: files written into the job's directory, owned by
its user, and a status written as the admin through ``/status`` (``jobId``, ``phase``, ``outputs``
with sizes and digests), exactly as the bridge would write it. The CLI runs as a subprocess with a
``user`` kubeconfig, as an HPC user would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.cli.bridge_cmd import human_size, log_group, output_path_error
from slurmlink.cli.resources_cmd import CliError
from support.server import ServerProcess
from support.storage import world_searchable_dir
from support.unix_users import ensure_unix_user
from support.waiting import wait_for

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="the bridge acts as the jobs' owners, which needs root"),
]

ALICE, BOB = "slurmlink-alice", "slurmlink-bob"
V1 = "/apis/slurmlink.io/v1/namespaces/default/slurmjobs"
WLM = "/apis/wlm.sylabs.io/v1alpha1/namespaces/default/slurmjobs"


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge_root() -> Iterator[Path]:
    """The job directories' root: root's, under a directory every user may traverse."""
    base = world_searchable_dir("slurmlink-bridge-cli-")
    try:
        yield base / "jobs"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bridge_root: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("bridge-cli") / "state",
        extra_args=(
            "--bridge",
            "--bridge-root",
            str(bridge_root),
            "--slurm-conf",
            "/nonexistent/slurm.conf",
        ),
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def users() -> dict[str, Any]:
    return {login: ensure_unix_user(login) for login in (ALICE, BOB)}


@pytest.fixture(scope="module")
def creds(server: ServerProcess, users: dict[str, Any]) -> dict[str, Path]:
    return {
        "admin": server.kubeconfig,
        ALICE: server.issue_kubeconfig(ALICE, "user", "default"),
        BOB: server.issue_kubeconfig(BOB, "user", "default", token=True),
    }


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    client = server.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def alice(server: ServerProcess, creds: dict[str, Path]) -> Iterator[httpx.Client]:
    client = server.client(creds[ALICE])
    yield client
    client.close()


# ---- helpers -------------------------------------------------------------------------------------


def cli(
    kubeconfig: Path, *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    if check:
        assert done.returncode == 0, f"slurmlink {' '.join(args)}: {done.stderr}"
    return done


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create(client: httpx.Client, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
    response = client.post(collection, json=obj)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def slurmjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "SlurmJob",
        "metadata": {"name": name},
        "spec": {"script": "#!/bin/sh\necho hi\n", **spec},
    }


def staged(admin: httpx.Client, collection: str, name: str) -> Path:
    """The job's directory, once the bridge has staged the job (and is waiting for Slurm)."""

    def ready() -> Path | None:
        status = admin.get(f"{collection}/{name}").json().get("status") or {}
        types = {c.get("type") for c in status.get("conditions") or []}
        work_dir = status.get("workDir")
        return Path(work_dir) if work_dir and "Submitted" in types and Path(work_dir).is_dir() else None

    return wait_for(ready, 60, 0.2, message=f"the bridge to stage {name}")


def write_status(admin: httpx.Client, collection: str, name: str, **fields: Any) -> httpx.Response:
    """Merge ``fields`` into the job's status through ``/status`` (as the bridge does), retrying conflicts."""
    for _ in range(20):
        obj = admin.get(f"{collection}/{name}").json()
        obj["status"] = {**(obj.get("status") or {}), **fields}
        response = admin.put(f"{collection}/{name}/status", json=obj)
        if response.status_code != 409:
            return response
        time.sleep(0.2)
    raise AssertionError(f"status of {name} kept conflicting")


def put_file(job_dir: Path, rel: str, data: bytes, owner: Any) -> dict[str, Any]:
    """A file in the job's directory, owned by the job's user as the job would have left it."""
    path = job_dir / rel
    here = job_dir
    for part in Path(rel).parent.parts:
        here = here / part
        if not here.exists():
            here.mkdir(mode=0o700)
            os.chown(here, owner.pw_uid, owner.pw_gid)
    path.write_bytes(data)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return {"path": rel, "size": len(data), "sha256": sha256(data)}


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---- no server ----------------------------------------------------------------------------------


def test_the_cli_judges_listed_paths_itself() -> None:
    for bad in ("../evil", "a/../../evil", "/etc/passwd", "", ".", "a\x00b", None):
        assert output_path_error(bad) is not None, bad
    for good in ("out.txt", "results/a b.txt", "./x", "deep/er/file"):
        assert output_path_error(good) is None, good
    assert log_group("sj", None) == "slurmlink.io"
    assert log_group("slurmjobs.wlm.sylabs.io", None) == "wlm.sylabs.io"
    assert log_group("SlurmJob", "wlm.sylabs.io") == "wlm.sylabs.io"
    with pytest.raises(CliError, match="SlurmJobs only"):
        log_group("pods", None)
    with pytest.raises(CliError, match="--group says"):
        log_group("slurmjobs.slurmlink.io", "wlm.sylabs.io")


# ---- upload --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uploaded(creds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An archive-looking file uploaded by alice through the CLI."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path_factory.mktemp("upload") / "inputs.tar"
    path.write_bytes(data)
    done = cli(creds[ALICE], "sj", "upload", str(path))
    first = done.stdout.splitlines()[0]
    upload_id = first.split(" as ", 1)[1].split(" ", 1)[0]
    return {"id": upload_id, "data": data, "path": path, "stdout": done.stdout}


def test_upload_prints_the_id_and_a_snippet(uploaded: dict[str, Any]) -> None:
    digest = sha256(uploaded["data"])
    out = uploaded["stdout"]
    assert uploaded["id"].startswith("up-")
    assert f"sha256 {digest}" in out.splitlines()[0]
    assert "3.0 MiB" in out.splitlines()[0]
    assert f"    - upload: {uploaded['id']}\n      sha256: {digest}\n" in out
    assert "# unpack: tar" in out


def test_upload_json_and_id_outputs(creds: dict[str, Path], tmp_path: Path) -> None:
    data = b"hello bridge\n" * 1000
    (tmp_path / "notes.txt").write_bytes(data)
    answer = json.loads(
        cli(
            creds[ALICE], "sj", "upload", str(tmp_path / "notes.txt"), "--name", "readme", "-o", "json"
        ).stdout
    )
    assert answer["sha256"] == sha256(data) and answer["size"] == len(data)
    assert answer["name"] == "readme" and answer["namespace"] == "default"
    only = cli(creds[ALICE], "sj", "upload", str(tmp_path / "notes.txt"), "-n", "default", "-o", "id")
    assert only.stdout.strip().startswith("up-") and len(only.stdout.splitlines()) == 1
    assert only.stdout.strip() != answer["id"]
    # An admin uploads only on a named user's behalf: the server's refusal is one line.
    refused = cli(creds["admin"], "sj", "upload", str(tmp_path / "notes.txt"), check=False)
    one_line_error(refused, "Error from server (BadRequest)", "?owner=UID")


# ---- a finished job's outputs and log ------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(
    admin: httpx.Client, alice: httpx.Client, users: dict[str, Any], uploaded: dict[str, Any]
) -> dict[str, Any]:
    """Job ``fold`` of alice: staged from her upload, then outputs and a log as if it had run."""
    create(
        alice, V1, slurmjob("fold", inputs=[{"upload": uploaded["id"], "sha256": sha256(uploaded["data"])}])
    )
    job_dir = staged(admin, V1, "fold")
    owner = users[ALICE]
    files = {
        "results/a file.txt": b"alpha\n" * 100,
        "results/sub/b.bin": os.urandom(200_000),
        "summary.log": b"all done\n",
    }
    outputs = [put_file(job_dir, rel, data, owner) for rel, data in files.items()]
    log = b"hi\nstep 1 of 2\nstep 2 of 2\n"
    put_file(job_dir, "slurm-4711.out", log, owner)
    response = write_status(admin, V1, "fold", phase="Succeeded", jobId="4711", outputs=outputs)
    assert response.status_code == 200, response.text
    return {"dir": job_dir, "files": files, "outputs": outputs, "log": log}


def test_the_upload_was_staged_into_the_job(finished: dict[str, Any], uploaded: dict[str, Any]) -> None:
    staged_file = finished["dir"] / "inputs.tar"
    assert staged_file.read_bytes() == uploaded["data"]


def test_download_gets_every_output_checked(
    creds: dict[str, Path], finished: dict[str, Any], tmp_path: Path
) -> None:
    done = cli(creds[ALICE], "sj", "download", "fold", cwd=tmp_path)
    total = sum(len(d) for d in finished["files"].values())
    assert done.stdout.strip() == f"3 files ({human_size(total)}) downloaded into fold", done.stdout
    for rel, data in finished["files"].items():
        assert (tmp_path / "fold" / rel).read_bytes() == data
    assert not list((tmp_path / "fold").rglob("*.part"))
    # The job's other files (its input, its log, the bridge's control directory) are not outputs.
    assert not (tmp_path / "fold" / "inputs.tar").exists()
    assert not (tmp_path / "fold" / "slurm-4711.out").exists()

    again = cli(creds[ALICE], "sj", "download", "fold", cwd=tmp_path)
    assert "0 files" in again.stdout and "3 already there" in again.stdout

    some = cli(creds[ALICE], "sj", "download", "fold", "results/sub", "--to", str(tmp_path / "sub-only"))
    assert some.stdout.startswith("1 file (")
    assert [p.relative_to(tmp_path / "sub-only").as_posix() for p in (tmp_path / "sub-only").rglob("*")] == [
        "results",
        "results/sub",
        "results/sub/b.bin",
    ]
    missing = cli(
        creds[ALICE], "sj", "download", "fold", "nothing.txt", "--to", str(tmp_path / "x"), check=False
    )
    one_line_error(missing, '"nothing.txt" is not among the outputs')


def test_download_refuses_to_write_through_a_link(
    creds: dict[str, Path], finished: dict[str, Any], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "results").symlink_to(elsewhere)
    done = cli(creds[ALICE], "sj", "download", "fold", "--to", str(tmp_path / "dest"), check=False)
    assert done.returncode == 1
    assert "is a symbolic link" in done.stderr and "2 of 3 outputs failed" in done.stderr
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "dest" / "summary.log").read_bytes() == b"all done\n"


def test_a_tampered_output_fails_and_leaves_no_file(
    admin: httpx.Client,
    alice: httpx.Client,
    creds: dict[str, Path],
    users: dict[str, Any],
    tmp_path: Path,
) -> None:
    create(alice, V1, slurmjob("tampered"))
    job_dir = staged(admin, V1, "tampered")
    good = put_file(job_dir, "good.txt", b"fine\n", users[ALICE])
    listed = put_file(job_dir, "result.txt", b"the real result\n", users[ALICE])
    assert write_status(admin, V1, "tampered", phase="Succeeded", outputs=[listed, good]).status_code == 200
    (job_dir / "result.txt").write_bytes(b"THE REAL RESULT\n")  # same size, other bytes

    done = cli(creds[ALICE], "sj", "download", "tampered", cwd=tmp_path, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: result.txt: the server sent 16 bytes with sha256 "), lines
    assert f"status.outputs lists 16 bytes with sha256 {listed['sha256']}" in lines[0]
    assert "it was not kept" in lines[0]
    assert lines[-1].startswith("error: 1 of 2 outputs failed; 1 file (")
    assert sorted(p.name for p in (tmp_path / "tampered").iterdir()) == ["good.txt"]

    (job_dir / "result.txt").write_bytes(b"a longer, different result\n")
    longer = cli(creds[ALICE], "sj", "download", "tampered", "result.txt", cwd=tmp_path, check=False)
    assert "the server sent more than 16 bytes" in longer.stderr
    assert sorted(p.name for p in (tmp_path / "tampered").iterdir()) == ["good.txt"]


def test_a_status_listing_a_path_out_of_the_directory_is_refused_by_the_api(
    admin: httpx.Client, finished: dict[str, Any]
) -> None:
    evil = {"path": "../evil", "size": 1, "sha256": "0" * 64}
    response = write_status(admin, V1, "fold", outputs=[*finished["outputs"], evil])
    assert response.status_code == 422, response.text
    assert "status.outputs[3].path" in response.text and "cannot leave the job directory" in response.text


def test_logs_print_the_jobs_output(creds: dict[str, Path], finished: dict[str, Any]) -> None:
    for kind in ("sj", "slurmjob", "slurmjobs", "slurmjobs.slurmlink.io"):
        done = cli(creds[ALICE], "logs", kind, "fold")
        assert done.stdout == finished["log"].decode(), kind
    following = cli(creds[ALICE], "logs", "sj", "fold", "-f", "-n", "default")  # ended: prints and returns
    assert following.stdout == finished["log"].decode()
    one_line_error(cli(creds[ALICE], "logs", "pods", "fold", check=False), "SlurmJobs only")
    one_line_error(
        cli(creds[ALICE], "logs", "sj", "nosuch", check=False),
        "Error from server (NotFound)",
        "nosuch",
    )


def test_another_user_gets_a_one_line_refusal(
    creds: dict[str, Path], finished: dict[str, Any], tmp_path: Path
) -> None:
    for args in (("logs", "sj", "fold"), ("sj", "download", "fold")):
        done = cli(creds[BOB], *args, cwd=tmp_path, check=False)
        one_line_error(done, "Error from server (Forbidden)", "fold")
    assert not (tmp_path / "fold").exists()


def test_logs_follow_waits_for_the_job_and_ends_with_it(
    admin: httpx.Client, alice: httpx.Client, creds: dict[str, Path], users: dict[str, Any]
) -> None:
    create(alice, V1, slurmjob("followed"))
    job_dir = staged(admin, V1, "followed")
    assert write_status(admin, V1, "followed", phase="Queued", jobId="4712").status_code == 200
    argv = ["logs", "sj", "followed", "-f", "--kubeconfig", str(creds[ALICE])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmlink.cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # the CLI is waiting: the job has no output yet
        assert proc.poll() is None
        put_file(job_dir, "slurm-4712.out", b"line 1\n", users[ALICE])
        assert write_status(admin, V1, "followed", phase="Running").status_code == 200
        time.sleep(3)
        with (job_dir / "slurm-4712.out").open("ab") as handle:
            handle.write(b"line 2\n")
        time.sleep(1)
        assert proc.poll() is None
        assert write_status(admin, V1, "followed", phase="Succeeded").status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "line 1\nline 2\n"
    assert err.startswith('waiting for slurmjobs.slurmlink.io "followed" to start (Queued)')


# ---- the WLM operator's kind ----------------------------------------------------------------------


def test_the_seeds_kind_by_group(
    admin: httpx.Client,
    alice: httpx.Client,
    creds: dict[str, Path],
    users: dict[str, Any],
    tmp_path: Path,
) -> None:
    create(
        alice,
        WLM,
        {
            "apiVersion": "wlm.sylabs.io/v1alpha1",
            "kind": "SlurmJob",
            "metadata": {"name": "seeded"},
            "spec": {"batch": "#!/bin/sh\necho Hello\n"},
        },
    )
    job_dir = staged(admin, WLM, "seeded")
    put_file(job_dir, "slurm-99.out", b"Hello\n", users[ALICE])
    output = put_file(job_dir, "bar/output.txt", b"foo\nslurm\n", users[ALICE])
    response = write_status(
        admin, WLM, "seeded", phase="Succeeded", status="Succeeded", jobId="99", outputs=[output]
    )
    assert response.status_code == 200, response.text

    assert cli(creds[ALICE], "logs", "slurmjobs.wlm.sylabs.io", "seeded").stdout == "Hello\n"
    assert cli(creds[ALICE], "logs", "sj", "seeded", "--group", "wlm.sylabs.io").stdout == "Hello\n"
    one_line_error(cli(creds[ALICE], "logs", "sj", "seeded", check=False), "Error from server (NotFound)")
    cli(creds[ALICE], "sj", "download", "seeded", "--group", "wlm.sylabs.io", cwd=tmp_path)
    assert (tmp_path / "seeded" / "bar" / "output.txt").read_bytes() == b"foo\nslurm\n"
