"""slurmlink's burst buffer plugin on a real Slurm, end to end (the acceptance scenarios of the seeds).

One real ``slurmlink serve`` (embedded store, test driver), one ``slurmlink slurm gateway`` and one
single-node Slurm with slurmlink's ``burst_buffer.lua`` serve the whole module. Jobs are submitted with
``sbatch`` as the unprivileged job user; Workflows are inspected and released with the real kubectl,
using the seeds' exact ``kubectl patch --type=json`` commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from slurmlink.slurm import plugin
from slurmlink.slurm.devcluster import BurstBufferSetup, DevCluster
from support.devcluster import new_cluster, skip_unless_possible, teardown_cluster
from support.kubectl import release_patch, run_kubectl
from support.server import ServerProcess
from support.waiting import wait_for

pytestmark = pytest.mark.slurm

STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
FINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
WORKFLOW = "workflows.dataworkflowservices.github.io"


@dataclass
class BurstBufferSystem:
    """Everything one test needs: the cluster, the server, the gateway and kubectl."""

    cluster: DevCluster
    server: ServerProcess
    kubectl: Path
    gateway_socket: Path
    gateway_args: list[str]
    gateway_log: Path
    burst_buffer: BurstBufferSetup | None = None
    gateway: subprocess.Popen[bytes] | None = None

    # ---- processes ------------------------------------------------------------------------------

    def start_gateway(self) -> None:
        with open(self.gateway_log, "ab") as log:
            self.gateway = subprocess.Popen(
                self.gateway_args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.gateway_healthy, timeout=30, message="the gateway to answer /v1/healthz")

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(10)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait(5)
        self.gateway = None

    def gateway_healthy(self) -> bool:
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.gateway_socket))
                sock.sendall(b"GET /v1/healthz HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
        except OSError:
            return False
        return data.startswith(b"HTTP/1.0 200")

    # ---- Slurm ----------------------------------------------------------------------------------

    def submit(self, script: str, *extra: str) -> subprocess.CompletedProcess[str]:
        jobs = self.cluster.jobs_dir
        path = jobs / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        path.chmod(0o644)
        return self.cluster.run_as_job_user(
            ["sbatch", f"--output={jobs}/%j.out", *extra, str(path)], cwd=str(jobs), timeout=30
        )

    def submit_ok(self, script: str) -> str:
        result = self.submit(script)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}"
        return result.stdout.strip().split()[-1]

    def job(self, job_id: str) -> dict[str, str]:
        return self.cluster.job_info(job_id) or {}

    def job_state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_job_final(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """Wait until the job is finished and its burst buffer fully torn down."""

        def done() -> dict[str, str] | None:
            info = self.job(job_id)
            if info.get("JobState") not in FINAL:
                return None
            bb_state = info.get("BurstBufferState", "complete")
            if bb_state == "complete":
                return info
            if bb_state == "teardown" and self.slurm_dropped_teardown(job_id):
                # Slurm's own race: its teardown never ran, so the gateway's sweeper tore the Workflow down.
                return info if self.workflow(job_id) is None else None
            return None

        try:
            return wait_for(done, timeout=timeout, interval=0.1, message=f"job {job_id} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics(job_id)}") from None

    def slurm_dropped_teardown(self, job_id: str) -> bool:
        """slurmctld killed its own teardown callback for the job (a cancel's flush racing the teardown
        the same cancel queued); Slurm 22.05 never retries it, so BurstBufferState stays ``teardown``."""
        log = self.cluster.slurmctld_log.read_text(errors="replace")
        return f"teardown for JobId={job_id} terminated by slurmctld" in log

    def bbstat(self, *words: str) -> str:
        result = self.cluster.run_as_job_user(["scontrol", "show", "bbstat", *words], timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def scancel(self, job_id: str, *flags: str) -> None:
        result = self.cluster.run_as_job_user(["scancel", *flags, job_id], timeout=30)
        assert result.returncode == 0, result.stderr

    # ---- Workflows through kubectl --------------------------------------------------------------

    def kubectl_run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubectl, self.server.kubeconfig, *args, input=input)

    def workflow(self, job_id: str) -> dict[str, object] | None:
        result = self.kubectl_run("get", WORKFLOW, "-n", "slurm", f"bb{job_id}", "-o", "yaml")
        if result.returncode != 0:
            assert "NotFound" in result.stderr or "not found" in result.stderr, result.stderr
            return None
        loaded = yaml.safe_load(result.stdout)
        assert isinstance(loaded, dict)
        return loaded

    def wait_workflow(self, job_id: str, state: str, status: str, timeout: float = 60) -> dict[str, object]:
        def reached() -> dict[str, object] | None:
            wf = self.workflow(job_id)
            st = (wf or {}).get("status") or {}
            assert isinstance(st, dict)
            return wf if st.get("state") == state and st.get("status") == status else None

        try:
            return wait_for(reached, timeout=timeout, interval=0.2, message=f"bb{job_id} {state}/{status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics(job_id)}") from None

    def diagnostics(self, job_id: str) -> str:
        """What a failed wait needs for a post-mortem: the Workflow, the job and the logs' lines on it."""
        about_job = re.compile(rf"(JobId=|bb|job |jobid=|job_id=){job_id}\b", re.IGNORECASE)

        def lines_about_job(path: Path, limit: int = 40) -> str:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError as exc:
                return str(exc)
            return "\n".join([line for line in lines if about_job.search(line)][-limit:])

        return (
            f"--- workflow bb{job_id}: {self.workflow(job_id)}\n--- job: {self.job(job_id)}\n"
            f"--- gateway log on job {job_id}:\n{lines_about_job(self.gateway_log)}\n"
            f"--- slurmctld log on job {job_id}:\n{lines_about_job(self.cluster.slurmctld_log)}"
        )

    def wait_workflow_gone(self, job_id: str, timeout: float = 40) -> None:
        try:
            wait_for(lambda: self.workflow(job_id) is None, timeout=timeout, interval=0.2, message="deletion")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics(job_id)}") from None

    def release(self, job_id: str, index: int, *, clear_error: bool = False) -> None:
        """The seeds' ``kubectl patch --type=json`` that marks driver entry ``index`` completed."""
        patch = release_patch(index, clear_error=clear_error)
        result = self.kubectl_run(
            "patch", "workflow", "-n", "slurm", f"bb{job_id}", "--type=json", "-p", patch
        )
        assert result.returncode == 0, result.stderr
        assert f"workflow.dataworkflowservices.github.io/bb{job_id} patched" in result.stdout


@pytest.fixture(scope="module")
def bb(kubectl_132: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BurstBufferSystem]:
    skip_unless_possible()
    work = tmp_path_factory.mktemp("bbsys")
    server = ServerProcess(work / "server").start()
    cluster = new_cluster("slurmlink-bb-")
    socket_path = cluster.state_dir / "run" / "bb.sock"
    kubeconfig = server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm")
    args = [
        sys.executable,
        "-m",
        "slurmlink.cli.main",
        "slurm",
        "gateway",
        "--kubeconfig",
        str(kubeconfig),
        "--socket",
        str(socket_path),
        "--slurm-conf",
        str(cluster.slurm_conf),
        "--api-timeout",
        "5",
        "--sweep-interval",
        "1",
        "--sweep-min-age",
        "0",
        "--log-format",
        "console",
        "--log-level",
        "debug",
    ]
    system = BurstBufferSystem(cluster, server, kubectl_132, socket_path, args, work / "gateway.log")
    with contextlib.ExitStack() as cleanup:  # every step runs even if an earlier one fails
        if os.environ.get("SLURMLINK_KEEP_DEV_CLUSTER"):
            cleanup.callback(print, f"gateway log: {system.gateway_log}", file=sys.stderr)
        else:
            cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        cleanup.callback(server.stop)
        cleanup.callback(teardown_cluster, cluster)
        cleanup.callback(system.stop_gateway)
        cluster.state_dir.joinpath("run").mkdir(parents=True, exist_ok=True)
        system.start_gateway()
        lua = plugin.render_burst_buffer_lua(socket_path, connect_retry=2)
        system.burst_buffer = BurstBufferSetup(lua, plugin.burst_buffer_conf_text())
        cluster.up(system.burst_buffer, wait_timeout=120)
        yield system


SEED_TEST_JOB = """#!/bin/sh
#SBATCH --time=1
#DW
/bin/hostname
srun -l /bin/hostname
srun -l /bin/pwd
"""


def _script(*directives: str, body: str = "/bin/hostname") -> str:
    return "#!/bin/bash\n" + "".join(f"#DW {d}\n" for d in directives) + body + "\n"


# ---- the seed's test job and the DataIn hold ------------------------------------------------------


def test_seed_test_job_completes_and_its_workflow_is_removed(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(SEED_TEST_JOB)
    info = bb.wait_job_final(job_id)
    assert info["JobState"] == "COMPLETED", info
    assert info["BurstBuffer"] == "#DW"
    bb.wait_workflow_gone(job_id)
    assert "Error running slurm_bb_get_status" in bb.bbstat("workflow", job_id)
    output = (bb.cluster.jobs_dir / f"{job_id}.out").read_text()
    assert "0: " in output  # srun -l ran inside the job


def test_datain_wait_is_visible_in_bbstat_and_released_with_the_seed_patch(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(_script("DataIn action=wait"))
    bb.wait_workflow(job_id, "DataIn", "DriverWait")
    assert bb.bbstat("workflow", job_id) == "desiredState=DataIn currentState=DataIn status=DriverWait"
    assert bb.job_state(job_id) == "PENDING"
    listing = bb.bbstat("workflows")
    assert re.search(rf"^{job_id}\s+bb{job_id}\s+\d+\s+DataIn\s+DataIn\s+DriverWait", listing, re.M), listing
    bb.release(job_id, 0)
    assert bb.wait_job_final(job_id)["JobState"] == "COMPLETED"
    bb.wait_workflow_gone(job_id)


def test_job_sees_the_workflow_environment(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(_script("DataIn action=wait", body="env | grep -E '^(DW_|SLURMLINK_TEST)' | sort"))
    bb.wait_workflow(job_id, "DataIn", "DriverWait")
    # A driver-provided variable, added the way a driver would (status.env), while DataIn holds the job.
    add_env = '[{"op":"add","path":"/status/env/SLURMLINK_TEST_VAR","value":"from the driver"}]'
    result = bb.kubectl_run("patch", "workflow", "-n", "slurm", f"bb{job_id}", "--type=json", "-p", add_env)
    assert result.returncode == 0, result.stderr
    bb.release(job_id, 0)
    assert bb.wait_job_final(job_id)["JobState"] == "COMPLETED"
    lines = (bb.cluster.jobs_dir / f"{job_id}.out").read_text().splitlines()
    assert f"DW_WORKFLOW_NAME=bb{job_id}" in lines
    assert "DW_WORKFLOW_NAMESPACE=slurm" in lines
    assert "SLURMLINK_TEST_VAR=from the driver" in lines


# ---- playground exercises 1 and 2 (seed 000) ---------------------------------------------------


def test_playground_exercise_1_dataout_wait(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(_script("DataOut action=wait", body="/bin/hostname\nsrun -l /bin/hostname"))
    bb.wait_workflow(job_id, "DataOut", "DriverWait")
    assert bb.job_state(job_id) == "STAGE_OUT"
    bb.release(job_id, 0)
    assert bb.wait_job_final(job_id)["JobState"] == "COMPLETED"
    bb.wait_workflow_gone(job_id)


def test_playground_exercise_2_major_error_cleared_then_teardown_released(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(
        _script(
            "DataOut action=error message=johnson_rod_misalignment severity=Major", "Teardown action=wait"
        )
    )
    wf = bb.wait_workflow(job_id, "DataOut", "TransientCondition")
    drivers = wf["status"]["drivers"]  # type: ignore[index]
    assert drivers[0]["error"] == "johnson rod misalignment"
    bb.release(job_id, 0, clear_error=True)
    bb.wait_workflow(job_id, "Teardown", "DriverWait")
    assert bb.bbstat("workflow", job_id) == "desiredState=Teardown currentState=Teardown status=DriverWait"
    bb.release(job_id, 1)
    info = bb.wait_job_final(job_id)
    assert info["JobState"] == "COMPLETED"
    assert "SystemComment" not in info or "johnson" not in info["SystemComment"]
    bb.wait_workflow_gone(job_id)


# ---- fatal errors in each state ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "final"),
    [
        ("Proposal", "CANCELLED"),
        ("Setup", "CANCELLED"),
        ("DataIn", "CANCELLED"),
        ("PreRun", "CANCELLED"),
        ("PostRun", "COMPLETED"),
        ("DataOut", "COMPLETED"),
    ],
)
def test_fatal_driver_error(bb: BurstBufferSystem, state: str, final: str) -> None:
    job_id = bb.submit_ok(
        _script(f"{state} action=error message=TEST_FATAL_ERROR severity=Fatal", "Teardown action=wait")
    )
    bb.wait_workflow(job_id, "Teardown", "DriverWait")
    comment = wait_for(
        lambda: bb.job(job_id).get("SystemComment", ""), timeout=20, message="the SystemComment"
    )
    assert "TEST FATAL ERROR" in comment
    assert "DWS driver error(s): tester: TEST FATAL ERROR" in comment
    bb.release(job_id, 1)
    bb.wait_workflow_gone(job_id)
    assert "Error running slurm_bb_get_status" in bb.bbstat("workflow", job_id)
    info = bb.wait_job_final(job_id)
    assert info["JobState"] == final, info


# ---- scancel and scancel --hurry (seed 001, "Canceling a test job") ----------------------------


def _hold_directives(state: str) -> list[str]:
    """Hold the job in ``state``; record whether DataOut ran; hold Teardown to read spec.hurry."""
    held = [f"{state} action=wait"] if state != "Running" else []
    if state != "DataOut":
        held.append("DataOut action=complete")
    held.append("Teardown action=wait")
    return held


@pytest.mark.parametrize(
    ("phase", "hurry_flag", "want_hurry", "dataout_runs"),
    [
        ("DataIn", False, True, False),
        ("DataIn", True, True, False),
        ("PreRun", False, True, False),
        ("PreRun", True, True, False),
        ("Running", False, False, True),
        ("Running", True, True, False),
        ("PostRun", False, False, True),
        ("PostRun", True, True, False),
        ("DataOut", False, False, True),
        ("DataOut", True, True, False),
    ],
)
def test_scancel(
    bb: BurstBufferSystem, phase: str, hurry_flag: bool, want_hurry: bool, dataout_runs: bool
) -> None:
    body = "sleep 300" if phase == "Running" else "/bin/hostname"
    directives = _hold_directives(phase)
    job_id = bb.submit_ok(_script(*directives, body=body))
    if phase == "Running":
        wait_for(lambda: bb.job_state(job_id) == "RUNNING", timeout=30, message="the job to run")
        bb.wait_workflow(job_id, "PreRun", "Completed")
    else:
        bb.wait_workflow(job_id, phase, "DriverWait")
    bb.scancel(job_id, *(["--hurry"] if hurry_flag else []))
    if phase in ("PostRun", "DataOut") and not hurry_flag:
        # Plain scancel during stage-out is ignored: stage-out goes on once the driver is released.
        bb.release(job_id, 0)
    wf = bb.wait_workflow(job_id, "Teardown", "DriverWait")
    spec, drivers = wf["spec"], wf["status"]["drivers"]  # type: ignore[index]
    assert bool(spec.get("hurry")) is want_hurry, spec  # type: ignore[union-attr]
    dataout = [d for d in drivers if d["watchState"] == "DataOut"]
    if phase != "DataOut":
        assert (dataout[0]["status"] == "Completed") is dataout_runs, dataout
    bb.release(job_id, len(directives) - 1)
    bb.wait_workflow_gone(job_id)
    bb.wait_job_final(job_id)


# ---- bad directives --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "reason"),
    [
        ("Bogus x=y", "invalid directive '#DW Bogus x=y'"),
        ("DataIn message=x", "missing required argument 'action'"),
        ("DataIn action=wait;touch${IFS}/tmp/slurmlink-pwned", "contains ';'"),
        ("DataIn action=$(touch /tmp/slurmlink-pwned)", "contains '('"),
        ("DataIn action=`touch /tmp/slurmlink-pwned`", "contains '`'"),
        ('DataIn action="wait"', "contains '\"'"),
        ("DataIn action=wait message='x' severity=Minor", 'contains "\'"'),
        ("DataIn action=wait\\\n#DW |touch /tmp/slurmlink-pwned", "contains '|'"),
    ],
)
def test_bad_directives_are_rejected_at_sbatch(bb: BurstBufferSystem, directive: str, reason: str) -> None:
    pwned = Path("/tmp/slurmlink-pwned")
    pwned.unlink(missing_ok=True)
    result = bb.submit(_script(directive))
    assert result.returncode != 0
    assert "sbatch: error: burst_buffer/lua:" in result.stderr
    assert reason in result.stderr, result.stderr
    assert "Batch job submission failed: Burst Buffer request invalid" in result.stderr
    assert not pwned.exists()


# ---- failures of the services around Slurm ----------------------------------------------------


def test_gateway_down_rejects_submission_with_a_clear_message(bb: BurstBufferSystem) -> None:
    bb.stop_gateway()
    try:
        started = time.monotonic()
        result = bb.submit(_script("DataIn action=complete"))
        assert time.monotonic() - started < 10
        assert result.returncode != 0
        assert "cannot reach the slurmlink gateway" in result.stderr, result.stderr
        assert "slurmlink slurm gateway" in result.stderr
    finally:
        bb.start_gateway()
    job_id = bb.submit_ok(_script("DataIn action=complete"))
    assert bb.wait_job_final(job_id)["JobState"] == "COMPLETED"


def test_api_unreachable_fails_the_callback_in_bounded_time(bb: BurstBufferSystem) -> None:
    bb.server.stop()
    try:
        job_id = bb.submit_ok(_script("DataIn action=complete"))
        started = time.monotonic()
        comment = wait_for(
            lambda: bb.job(job_id).get("SystemComment", ""), timeout=40, message="the SystemComment"
        )
        assert "unreachable" in comment, comment
        assert time.monotonic() - started < 30
        squeue = bb.cluster.run_slurm(["squeue", "-h"], timeout=5)  # slurmctld is not hung
        assert squeue.returncode == 0
    finally:
        bb.server.start()
        wait_for(bb.gateway_healthy, timeout=30, message="the gateway to reconnect")
    bb.scancel(job_id)
    bb.wait_job_final(job_id)


def test_server_restart_mid_state_the_job_continues(bb: BurstBufferSystem) -> None:
    job_id = bb.submit_ok(_script("DataIn action=wait"))
    bb.wait_workflow(job_id, "DataIn", "DriverWait")
    bb.server.kill()
    bb.server.start()
    bb.release(job_id, 0)
    assert bb.wait_job_final(job_id)["JobState"] == "COMPLETED"
    bb.wait_workflow_gone(job_id)


def test_orphan_workflow_is_swept(bb: BurstBufferSystem) -> None:
    orphan = """apiVersion: dataworkflowservices.github.io/v1alpha2
kind: Workflow
metadata: {name: bb987654, namespace: slurm, labels: {origin: burst_buffer.lua}}
spec: {desiredState: Proposal, dwDirectives: [], wlmID: slurm, jobID: "987654", userID: 23001, groupID: 23001}
"""
    keep = orphan.replace("bb987654", "keepme").replace("origin: burst_buffer.lua", "origin: elsewhere")
    for text in (orphan, keep):
        applied = bb.kubectl_run("apply", "-f", "-", input=text)
        assert applied.returncode == 0, applied.stderr
    wait_for(lambda: bb.workflow("987654") is None, timeout=30, interval=0.3, message="the sweep")
    kept = bb.kubectl_run("get", WORKFLOW, "-n", "slurm", "keepme")
    assert kept.returncode == 0, kept.stderr
    bb.kubectl_run("delete", WORKFLOW, "-n", "slurm", "keepme")


def test_workflows_of_ended_jobs_are_swept_and_of_pending_jobs_kept(bb: BurstBufferSystem) -> None:
    """A Workflow whose job ended without a teardown on the way (Slurm dropped it, or the job was
    cancelled before stage-in) is torn down by the gateway; one whose job is still pending is not."""
    held = bb.submit("#!/bin/bash\n/bin/true\n", "--hold")
    assert held.returncode == 0, held.stderr
    held_id = held.stdout.strip().split()[-1]
    ended_id = bb.submit_ok("#!/bin/bash\n/bin/true\n")
    wait_for(lambda: bb.job_state(ended_id) == "COMPLETED", timeout=60, message=f"job {ended_id} to end")
    template = """apiVersion: dataworkflowservices.github.io/v1alpha2
kind: Workflow
metadata: {{name: bb{job}, namespace: slurm, labels: {{origin: burst_buffer.lua}}}}
spec: {{desiredState: Proposal, dwDirectives: [], wlmID: slurm, jobID: "{job}", userID: 23001,
  groupID: 23001}}
"""
    for job in (held_id, ended_id):  # held first: every sweep that sees the ended job's Workflow sees both
        applied = bb.kubectl_run("apply", "-f", "-", input=template.format(job=job))
        assert applied.returncode == 0, applied.stderr
    wait_for(lambda: bb.workflow(ended_id) is None, timeout=60, interval=0.3, message="the sweep")
    assert bb.workflow(held_id) is not None
    assert bb.job_state(held_id) == "PENDING"
    bb.scancel(held_id)  # cancelled before stage-in: Slurm calls no teardown at all
    wait_for(lambda: bb.workflow(held_id) is None, timeout=60, interval=0.3, message="the second sweep")
    assert f"job {ended_id} ended (COMPLETED, BurstBufferState=none)" in bb.gateway_log.read_text()


def test_slurmctld_restart_during_stage_in(bb: BurstBufferSystem) -> None:
    """Slurm tears the stage-in down when slurmctld restarts; the job must continue or fail cleanly."""
    job_id = bb.submit_ok(_script("DataIn action=wait"))
    first = bb.wait_workflow(job_id, "DataIn", "DriverWait")
    slurmctld = bb.cluster._daemon("slurmctld")
    bb.cluster._stop(slurmctld, 10)
    bb.cluster.up(bb.burst_buffer, wait_timeout=120)

    def settled() -> dict[str, object] | str | None:
        info = bb.job(job_id)
        if info.get("JobState") in FINAL:
            return info.get("JobState", "")
        wf = bb.workflow(job_id)
        if wf is None or wf["metadata"]["uid"] == first["metadata"]["uid"]:  # type: ignore[index]
            return None
        status = wf.get("status") or {}
        assert isinstance(status, dict)
        return wf if (status.get("state"), status.get("status")) == ("DataIn", "DriverWait") else None

    outcome = wait_for(settled, timeout=150, interval=0.5, message="the job to resume stage-in or end")
    if isinstance(outcome, dict):  # stage-in started again on a fresh Workflow: release it
        bb.release(job_id, 0)
        assert bb.wait_job_final(job_id, timeout=90)["JobState"] == "COMPLETED"
    else:  # or it ended, with the reason visible to the user
        assert bb.job(job_id).get("SystemComment") or bb.job(job_id).get("Reason"), bb.job(job_id)
    bb.wait_workflow_gone(job_id)
