"""Data staged into and out of burst buffers by real Slurm jobs, as the job's user.

On the multi-node quick start (2 compute, 3 storage nodes; shared with test_burst_buffers): ``#DW
copy_in``/``copy_out`` (NNF) and ``stage_in``/``stage_out`` (DataWarp) become DataMovements that the
storage nodes' agents run with the job's uid and gid. The tests check what the job sees at start
(digests of the tree on each compute node), what comes back after it ends (each node's data in its own
subdirectory for per-node buffers), that checksums were verified, that a user cannot read or write
through the mover what their own shell could not, that ``scancel --hurry`` stops a stage-out within
seconds, and that a storage agent killed mid-copy resumes without copying verified files again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.mover.journal import verified_count
from support import trees
from support.devcluster import quickstart_cli
from support.quickstart import QuickStart, finish_job, run_job
from support.waiting import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.storage, pytest.mark.timeout(900)]

NS = "slurm"
SL = "/apis/slurmlink.io/v1"
DWS = "/apis/dataworkflowservices.github.io/v1alpha7"
COMPUTES = ["compute1", "compute2"]
_dirs = itertools.count(1)


class MovementWatch:
    """Every DataMovement's latest copy, from a watch: they are deleted with their job at teardown, so
    a test reads their final status here."""

    def __init__(self, qs: QuickStart) -> None:
        self.client = qs.client()
        self.client.timeout = httpx.Timeout(30, read=None)
        self.seen: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._stop = False
        self._network_stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"{SL}/namespaces/{NS}/datamovements"
        while not self._stop:
            try:
                listed = self.client.get(path).json()
                self._record(listed["items"])
                version = listed["metadata"]["resourceVersion"]
                params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "10"}
                with self.client.stream("GET", path, params=params) as stream:
                    self._network_stream = stream.extensions.get("network_stream")
                    for line in stream.iter_lines():
                        if self._stop:
                            return
                        if line:
                            event = json.loads(line)
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                self._record([event["object"]])
            except (httpx.HTTPError, ValueError, KeyError):
                if self._stop:
                    return
                time.sleep(0.2)

    def _record(self, objs: list[dict[str, Any]]) -> None:
        with self._changed:
            for obj in objs:
                self.seen[obj["metadata"]["name"]] = obj
            self._changed.notify_all()

    def of_job(self, job: str, direction: str | None = None) -> list[dict[str, Any]]:
        with self._changed:
            found = [m for n, m in self.seen.items() if n.startswith(f"bb{job}-")]
        return sorted(
            (m for m in found if direction is None or m["spec"]["direction"] == direction),
            key=lambda m: m["metadata"]["name"],
        )

    def close(self) -> None:
        """Stop the reading thread before closing its client.

        Closing the client under a thread blocked in a TLS read frees the socket's descriptor while
        OpenSSL still reads from that number: the next connection the process opens gets it, and the
        stale reader eats that connection's bytes. So: shut the socket down (which wakes the reader
        without freeing the descriptor), wait for the thread, then close.
        """
        self._stop = True
        stream = self._network_stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the DataMovement watch thread did not stop"
        self.client.close()


@pytest.fixture(scope="module")
def qs(bb_quickstart: QuickStart) -> QuickStart:
    return bb_quickstart


@pytest.fixture(scope="module")
def watch(qs: QuickStart) -> Iterator[MovementWatch]:
    w = MovementWatch(qs)
    yield w
    w.close()


@pytest.fixture(scope="module")
def tool(qs: QuickStart) -> str:
    """trees.py where jobs can run it."""
    target = qs.cluster.state_dir / "jobs" / "trees.py"
    shutil.copyfile(trees.__file__, target)
    target.chmod(0o755)
    return str(target)


def _user(qs: QuickStart) -> tuple[int, int]:
    entry = pwd.getpwnam(qs.cluster.job_user)
    return entry.pw_uid, entry.pw_gid


def _area(qs: QuickStart, what: str) -> Path:
    """A fresh directory of the job user's, outside the buffers (the "parallel file system")."""
    path = qs.cluster.state_dir / "jobs" / f"{what}-{next(_dirs)}"
    path.mkdir()
    os.chown(path, *_user(qs))
    return path


def _digests(directory: Path, prefix: str) -> dict[str, dict[str, Any]]:
    """The digests jobs wrote with ``trees.py digest DIR OUT`` as ``<prefix>-<node>.json``."""
    return {
        p.name[len(prefix) + 1 : -5]: json.loads(p.read_text())
        for p in sorted(directory.glob(f"{prefix}-*.json"))
    }


def _succeeded(movements: list[dict[str, Any]]) -> None:
    for m in movements:
        status = m.get("status") or {}
        assert (status.get("state"), status.get("status")) == ("Finished", "Success"), status
        assert status["filesDone"] >= 1 and status["checksumsVerified"] == status["filesDone"], status
        assert status["bytesDone"] == status["bytesTotal"], status


# ---- NNF: copy_in and copy_out ------------------------------------------------------------------------


@pytest.mark.parametrize(("fs_type", "pool"), [("xfs", "xfs"), ("gluster", "gluster")])
def test_tree_copied_in_to_every_node_and_results_back(
    qs: QuickStart, watch: MovementWatch, tool: str, fs_type: str, pool: str
) -> None:
    uid, gid = _user(qs)
    source = _area(qs, "in") / "tree"
    trees.make_tree(source, uid, gid)
    results = _area(qs, "results")
    digests = _area(qs, "digests")
    per_node = fs_type == "xfs"
    write = "$DW_JOB_buf/out/$(hostname)" if not per_node else "$DW_JOB_buf/out"
    job = run_job(
        qs,
        f"""
#SBATCH -N2 --time=5
#DW jobdw type={fs_type} capacity=1GiB name=buf pool={pool}
#DW copy_in source={source} destination=$DW_JOB_buf/in
#DW copy_out source=$DW_JOB_buf/out destination={results}/run
srun sh -c 'python3 {tool} digest $DW_JOB_buf/in {digests}/in-$(hostname).json'
srun sh -c 'mkdir -p {write} && hostname > {write}/host && python3 {tool} fill {write} 150 3000 \\
  && python3 {tool} digest {write} {digests}/out-$(hostname).json'
""",
    )
    out = finish_job(qs, job)
    expected = trees.digest(source)
    assert "etc-link" in expected and "passwd" not in json.dumps(expected)
    # Both nodes saw the whole tree at start: contents, modes, times, links (etc-link still a link).
    assert _digests(digests, "in") == {node: expected for node in COMPUTES}, out
    written = _digests(digests, "out")
    assert sorted(written) == COMPUTES, out

    ins, outs = watch.of_job(job, "in"), watch.of_job(job, "out")
    assert len(ins) == len(outs) == (2 if per_node else 1)
    _succeeded(ins + outs)
    # Into the job's own new buffer files are written in place; out of it through temporary names.
    assert [m["spec"]["inPlace"] for m in ins + outs] == [True] * len(ins) + [False] * len(outs)
    if per_node:  # each node's buffer comes back in a directory named after the node
        assert sorted(p.name for p in results.iterdir()) == ["run"]
        assert sorted(p.name for p in (results / "run").iterdir()) == COMPUTES
        for node in COMPUTES:
            assert (results / "run" / node / "host").read_text().strip() == node
            assert trees.digest(results / "run" / node) == written[node]
    else:  # one shared file system: both nodes' directories in one copy
        assert sorted(p.name for p in (results / "run").iterdir()) == COMPUTES
        for node in COMPUTES:
            assert trees.digest(results / "run" / node) == written[node]
    assert trees.owners(results) == {uid}  # written as the job's user, nothing as root


# ---- DataWarp: stage_in and stage_out -----------------------------------------------------------------


def test_datawarp_stage_file_directory_and_list(qs: QuickStart, watch: MovementWatch, tool: str) -> None:
    uid, gid = _user(qs)
    source = _area(qs, "dw-in") / "tree"
    trees.make_tree(source, uid, gid)
    listing = source.parent / "files.list"
    listing.write_text(f"# pairs\n{source}/a.txt listed/a.txt\n{source}/sub/b.bin listed/b.bin\n")
    os.chown(listing, uid, gid)
    results = _area(qs, "dw-out")
    digests = _area(qs, "dw-digests")
    job = run_job(
        qs,
        f"""
#SBATCH -N1 --time=5
#DW jobdw type=scratch access_mode=striped capacity=1GiB pool=gluster
#DW stage_in source={source}/a.txt destination=$DW_JOB_STRIPED/a.txt type=file
#DW stage_in source={source}/sub destination=$DW_JOB_STRIPED/sub type=directory
#DW stage_in source={listing} destination=$DW_JOB_STRIPED type=list
#DW stage_out source=$DW_JOB_STRIPED/sub destination={results}/sub type=directory
#DW stage_out source=$DW_JOB_STRIPED/a.txt destination={results}/a.txt type=file
python3 {tool} digest $DW_JOB_STRIPED {digests}/in-job.json
""",
    )
    out = finish_job(qs, job)
    seen = _digests(digests, "in")["job"]
    assert seen["a.txt"] == trees.digest(source)["a.txt"], out
    assert {k: v for k, v in seen.items() if k.startswith("sub/")} == {
        f"sub/{k}": v for k, v in trees.digest(source / "sub").items()
    }, out
    assert seen["listed/a.txt"][3] == seen["a.txt"][3] and seen["listed/b.bin"][3] == seen["sub/b.bin"][3]
    _succeeded(watch.of_job(job))
    assert trees.digest(results / "sub") == trees.digest(source / "sub")
    assert (results / "a.txt").read_text() == "alpha\n"
    assert trees.owners(results) == {uid}


# ---- the user's rights, not root's ---------------------------------------------------------------------


def test_stage_in_of_an_unreadable_file_fails_the_job_with_the_reason(qs: QuickStart) -> None:
    uid, gid = _user(qs)
    source = _area(qs, "secret")
    (source / "ok.txt").write_text("fine\n")
    secret = source / "shadow-copy"
    secret.write_text("root only\n")
    secret.chmod(0o600)  # root's
    os.chown(source / "ok.txt", uid, gid)
    job = run_job(
        qs,
        f"""
#SBATCH -N1 --time=5
#DW jobdw type=xfs capacity=1GiB name=buf pool=xfs
#DW copy_in source={source} destination=$DW_JOB_buf/in
echo ran
""",
    )
    comment = wait_for(
        lambda: (qs.cluster.job_info(job) or {}).get("SystemComment", ""), 240, 0.5, message="the failure"
    )
    assert "Permission denied" in comment and str(secret) in comment, comment
    assert "#DW copy_in" in comment, comment
    info = qs.cluster.wait_for_job(job, ("CANCELLED", "FAILED"), timeout=240)
    assert info["JobState"] in ("CANCELLED", "FAILED"), info
    assert not (qs.cluster.state_dir / "jobs" / f"{job}.out").exists()  # it never ran


def test_stage_out_into_a_directory_the_user_cannot_write_creates_nothing(
    qs: QuickStart, watch: MovementWatch
) -> None:
    closed = qs.cluster.state_dir / "jobs" / f"roots-{next(_dirs)}"
    closed.mkdir(mode=0o755)  # root's: root could write here, the job's user cannot
    job = run_job(
        qs,
        f"""
#SBATCH -N1 --time=5
#DW jobdw type=xfs capacity=1GiB name=buf pool=xfs
#DW copy_out source=$DW_JOB_buf/out destination={closed}/out
mkdir $DW_JOB_buf/out && echo data > $DW_JOB_buf/out/f
""",
    )
    comment = wait_for(
        lambda: (qs.cluster.job_info(job) or {}).get("SystemComment", ""), 240, 0.5, message="the failure"
    )
    assert "Permission denied" in comment, comment
    (movement,) = watch.of_job(job, "out")
    assert movement["status"]["status"] == "Failed"
    assert list(closed.iterdir()) == []


# ---- cancel and restart ---------------------------------------------------------------------------------


def test_scancel_hurry_stops_a_long_stage_out_within_seconds(
    qs: QuickStart, watch: MovementWatch, tool: str
) -> None:
    results = _area(qs, "hurry")
    job = run_job(
        qs,
        f"""
#SBATCH -N1 --time=5
#DW jobdw type=xfs capacity=1GiB name=buf pool=xfs
#DW copy_out source=$DW_JOB_buf/out destination={results}/out
python3 {tool} fill $DW_JOB_buf/out 40000 8192
""",
    )

    def copying() -> dict[str, Any] | None:
        found = watch.of_job(job, "out")
        status = (found[0].get("status") or {}) if found else {}
        return found[0] if status.get("state") == "Running" and status.get("filesDone") else None

    movement = wait_for(copying, 300, 0.1, message="the stage-out to be under way")
    shown = qs.cluster.run_as_job_user(["scontrol", "show", "bbstat", "movement", job], timeout=30).stdout
    header, *rows = [line.split() for line in shown.splitlines() if line.strip()]
    assert header[:5] == ["COPY", "DIR", "NODE", "STATE", "FILES"], shown
    (row,) = rows
    assert row[:4] == [movement["metadata"]["name"], "out", movement["spec"]["node"], "Running"], shown
    assert row[4].endswith("/40000") and row[8] in {f"{results}/out/{c}" for c in COMPUTES}, shown

    started = time.monotonic()
    cancel = qs.cluster.run_as_job_user(["scancel", "--hurry", job], timeout=30)
    assert cancel.returncode == 0, cancel.stderr
    name = movement["metadata"]["name"]

    def stopped() -> dict[str, Any] | None:
        latest = watch.seen[name]
        return latest if (latest.get("status") or {}).get("state") == "Finished" else None

    final = wait_for(stopped, 30, 0.05, message="the copy to stop")
    assert time.monotonic() - started < 5, final["status"]
    assert final["status"]["status"] == "Cancelled"
    assert final["status"]["filesDone"] < 40000
    wait_for(
        lambda: (qs.cluster.job_info(job) or {}).get("BurstBufferState", "complete") == "complete",
        120,
        0.5,
        message="teardown",
    )


def test_storage_agent_killed_mid_stage_in_resumes_without_copying_verified_files_again(
    qs: QuickStart, watch: MovementWatch, tool: str
) -> None:
    uid, gid = _user(qs)
    source = _area(qs, "big")
    trees.fill(source / "data", 30000, 8192)
    for path in [source, *source.rglob("*")]:
        os.lchown(path, uid, gid)
    job = run_job(
        qs,
        f"""
#SBATCH -N1 --time=10
#DW jobdw type=xfs capacity=1GiB name=buf pool=xfs
#DW copy_in source={source}/data destination=$DW_JOB_buf/data
find $DW_JOB_buf/data -type f | wc -l
""",
    )

    def half_way() -> dict[str, Any] | None:
        found = watch.of_job(job, "in")
        status = (found[0].get("status") or {}) if found else {}
        return found[0] if status.get("state") == "Running" and status.get("filesDone", 0) > 3000 else None

    movement = wait_for(half_way, 300, 0.05, message="the stage-in to be under way")
    node = movement["spec"]["node"]
    journal = qs.dir / "storage" / node / "movements" / f"{movement['metadata']['uid']}.journal"
    pid = qs.agent_pid(node)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    verified_before = verified_count(journal)
    assert verified_before > 0
    up = quickstart_cli("up", *qs.where, timeout=480)
    assert up.returncode == 0, up.stderr
    out = finish_job(qs, job, timeout=600)
    assert out.strip().splitlines()[-1].strip() == "30000", out
    final = watch.seen[movement["metadata"]["name"]]["status"]
    assert final["status"] == "Success" and final["restarts"] == 1, final
    # Files verified before the kill were skipped, not copied again; the rest were copied and verified.
    assert final["filesSkipped"] == verified_before, final
    assert final["filesDone"] == final["checksumsVerified"] == 30000 - verified_before, final
