"""``slurmlink slurm gateway`` as its two real processes: the front answers, the worker stages.

The gateway runs against a real ``slurmlink serve`` (workflow controller and test driver included) and
is driven through its socket exactly as burst_buffer.lua drives it. Slurm itself is not needed: the
callbacks under test read job scripts from the StateSaveLocation named in a slurm.conf, which is all the
gateway takes from Slurm for them (the sweeper, which runs Slurm commands, is off).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmlink.slurm.devcluster import gateway_healthy
from support.gateway import form, http_request
from support.server import ServerProcess
from support.waiting import wait_for

WORKER_NICE = 7


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Gateway:
    """One gateway (front + worker) on its own socket and StateSaveLocation."""

    def __init__(self, root: Path, kubeconfig: Path, *options: str) -> None:
        self.root = root
        self.state = root / "state"
        self.state.mkdir(parents=True)
        self.slurm_conf = root / "slurm.conf"
        self.slurm_conf.write_text(f"ClusterName=front-test\nStateSaveLocation={self.state}\n")
        self.socket = root / "bb.sock"
        self.log = root / "gateway.log"
        argv = [
            sys.executable, "-m", "slurmlink.cli.main", "slurm", "gateway",
            "--kubeconfig", str(kubeconfig), "--socket", str(self.socket),
            "--slurm-conf", str(self.slurm_conf), "--api-timeout", "5", "--sweep-interval", "0",
            "--worker-nice", str(WORKER_NICE), "--log-format", "console", "--log-level", "debug",
            *options,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(
            self.healthy, timeout=30, interval=0.1, message=f"the gateway to be healthy (log: {self.log})"
        )

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"the gateway exited: {self.log.read_text()[-3000:]}"
        return gateway_healthy(self.socket)

    def worker_pid(self) -> int:
        return wait_for(lambda: next(iter(_children(self.proc.pid)), None), timeout=10, message="the worker")

    def write_script(self, job_id: int, *directives: str) -> str:
        job_dir = self.state / f"hash.{job_id % 10}" / f"job.{job_id}"
        job_dir.mkdir(parents=True)
        path = job_dir / "script"
        path.write_text("#!/bin/bash\n" + "".join(f"#DW {d}\n" for d in directives) + "/bin/true\n")
        return str(path)

    def call(self, op: str, timeout: float = 20.0, **fields: str) -> tuple[int, str]:
        return asyncio.run(http_request(self.socket, "POST", f"/v1/{op}", form(fields), timeout=timeout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("front") / "server") as srv:
        yield srv


@pytest.fixture
def gateway(server: ServerProcess, tmp_path: Path) -> Iterator[Gateway]:
    kubeconfig = server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm")
    gw = Gateway(tmp_path / "gw", kubeconfig)
    try:
        yield gw
    finally:
        gw.stop()


def _workflow(server: ServerProcess, job_id: int) -> dict[str, Any] | None:
    with server.client() as http:
        response = http.get(
            f"/apis/dataworkflowservices.github.io/v1alpha2/namespaces/slurm/workflows/bb{job_id}"
        )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _in_state(server: ServerProcess, job_id: int, state: str, status: str) -> bool:
    st = (_workflow(server, job_id) or {}).get("status") or {}
    return (st.get("state"), st.get("status")) == (state, status)


def _ids() -> dict[str, str]:
    return {"uid": str(os.getuid()), "gid": str(os.getgid())}


def test_the_worker_runs_in_its_own_session_at_a_lower_priority(gateway: Gateway) -> None:
    worker = gateway.worker_pid()
    assert os.getpriority(os.PRIO_PROCESS, gateway.proc.pid) == 0
    assert os.getpriority(os.PRIO_PROCESS, worker) == WORKER_NICE
    assert os.getsid(worker) == worker
    autogroup = Path(f"/proc/{worker}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-1] == str(WORKER_NICE)


def test_submissions_and_job_starts_are_answered_while_the_worker_is_frozen(
    gateway: Gateway, server: ServerProcess
) -> None:
    """job_process, paths and pre_run (a started job holds its nodes until it answers) are the front's."""
    script = gateway.write_script(501, "DataIn action=complete", "PreRun action=complete")
    assert gateway.call("setup", job_id="501", script=script, **_ids()) == (200, "")
    assert gateway.call("data_in", job_id="501") == (200, "")
    worker = gateway.worker_pid()
    os.kill(worker, signal.SIGSTOP)
    try:
        submitted = gateway.write_script(502, "PreRun action=complete")
        assert gateway.call("job_process", timeout=5, job_id="502", script=submitted) == (200, "")
        bad = gateway.write_script(503, "Bogus x=y")
        status, text = gateway.call("job_process", timeout=5, job_id="503", script=bad)
        assert status == 400 and "invalid directive '#DW Bogus x=y'" in text
        status, text = gateway.call("paths", timeout=5, job_id="501")
        assert (status, text.splitlines()[0]) == (200, "DW_WORKFLOW_NAME=bb501")
        assert gateway.call("pre_run", timeout=10, job_id="501", script=script) == (200, "")
        assert gateway.call("status", timeout=5, args="workflow 501") == (
            200,
            "desiredState=PreRun currentState=PreRun status=Completed",
        )
    finally:
        os.kill(worker, signal.SIGCONT)
    assert gateway.call("teardown", job_id="501", hurry="false") == (200, "")
    assert _workflow(server, 501) is None


def test_slurm_23_submissions_get_their_workflow_from_the_worker(
    gateway: Gateway, server: ServerProcess
) -> None:
    """Slurm 23.02+ passes uid/gid to job_process: the front answers, the worker creates the Workflow."""
    script = gateway.write_script(505, "DataIn action=complete")
    assert gateway.call("job_process", timeout=5, job_id="505", script=script, **_ids()) == (200, "")
    workflow = wait_for(
        lambda: _workflow(server, 505), timeout=20, interval=0.1, message="bb505 to be created"
    )
    assert workflow["spec"]["userID"] == os.getuid()
    assert workflow["spec"]["dwDirectives"] == ["#DW DataIn action=complete"]
    assert gateway.call("setup", job_id="505", script=script, **_ids()) == (200, "")  # adopts it
    assert _workflow(server, 505)["metadata"]["uid"] == workflow["metadata"]["uid"]  # type: ignore[index]
    assert gateway.call("teardown", job_id="505", hurry="true") == (200, "")
    assert _workflow(server, 505) is None


def test_a_caller_hanging_up_stops_the_operation_in_the_worker(
    gateway: Gateway, server: ServerProcess
) -> None:
    script = gateway.write_script(511, "DataIn action=wait")
    assert gateway.call("setup", job_id="511", script=script, **_ids()) == (200, "")

    async def hang_up_during_data_in() -> None:
        _reader, writer = await asyncio.open_unix_connection(str(gateway.socket))
        body = form({"job_id": "511"})
        writer.write(
            b"POST /v1/data_in HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await asyncio.to_thread(
            wait_for, lambda: _in_state(server, 511, "DataIn", "DriverWait"), 20, 0.1, "DataIn/DriverWait"
        )
        writer.close()  # Slurm killed the callback (StageInTimeout, scancel)
        await writer.wait_closed()

    asyncio.run(hang_up_during_data_in())

    def stopped_in_both() -> bool:
        lines = [
            line
            for line in gateway.log.read_text().splitlines()
            if "data_in job 511: caller went away" in line
        ]
        return len(lines) == 2  # the front's and the worker's

    wait_for(stopped_in_both, timeout=20, interval=0.1, message="front and worker to stop data_in")
    assert gateway.call("teardown", job_id="511", hurry="true") == (200, "")


def test_setups_beyond_the_limit_wait_their_turn_lowest_job_id_first(
    server: ServerProcess, tmp_path: Path
) -> None:
    """With one setup at a time, job 521's setup (its Setup state held by its driver) keeps 523's and
    522's waiting, untouched; released, 522 goes before 523, which arrived first."""
    kubeconfig = server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm")
    gw = Gateway(tmp_path / "gw", kubeconfig, "--setups-at-once", "1")
    scripts = {
        521: gw.write_script(521, "Setup action=wait"),
        523: gw.write_script(523, "Setup action=complete"),
        522: gw.write_script(522, "Setup action=complete"),
    }

    def setup(job_id: int) -> asyncio.Task[tuple[int, str]]:
        fields = {"job_id": str(job_id), "script": scripts[job_id], **_ids()}
        return asyncio.create_task(http_request(gw.socket, "POST", "/v1/setup", form(fields), timeout=60))

    def waiting(job_id: int) -> bool:
        return f"job {job_id}: setup waits for one of 1 turns" in gw.log.read_text()

    async def run() -> list[tuple[int, str]]:
        held = setup(521)
        await asyncio.to_thread(wait_for, lambda: _in_state(server, 521, "Setup", "DriverWait"), 20, 0.1)
        later = setup(523)
        await asyncio.to_thread(wait_for, lambda: waiting(523), 20, 0.1, "523 to wait for its turn")
        sooner = setup(522)
        await asyncio.to_thread(wait_for, lambda: waiting(522), 20, 0.1, "522 to wait for its turn")
        assert _workflow(server, 522) is None and _workflow(server, 523) is None  # not started at all
        with server.client() as http:  # the driver completes 521's Setup entry, as an operator would
            response = http.patch(
                "/apis/dataworkflowservices.github.io/v1alpha2/namespaces/slurm/workflows/bb521",
                json=[
                    {"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"},
                    {"op": "replace", "path": "/status/drivers/0/completed", "value": True},
                ],
                headers={"Content-Type": "application/json-patch+json"},
            )
            assert response.status_code == 200, response.text
        return list(await asyncio.gather(held, sooner, later))

    try:
        assert asyncio.run(run()) == [(200, "")] * 3
        done = [
            line for line in gw.log.read_text().splitlines() if "setup job 52" in line and " ok in " in line
        ]
        order = list(dict.fromkeys(line.split("setup job ")[1][:3] for line in done))  # first "ok" of each
        assert order == ["521", "522", "523"], done
        for job_id in scripts:
            assert gw.call("teardown", job_id=str(job_id), hurry="true") == (200, "")
    finally:
        gw.stop()


def test_a_worker_that_dies_is_restarted(gateway: Gateway, server: ServerProcess) -> None:
    first = gateway.worker_pid()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not _alive(first), timeout=10, message="the worker to die")
    second = wait_for(
        lambda: next((p for p in _children(gateway.proc.pid) if p != first), None),
        timeout=30,
        message="a new worker",
    )
    wait_for(gateway.healthy, timeout=30, interval=0.1, message="the gateway to be healthy again")
    assert "restarting" in gateway.log.read_text()
    script = gateway.write_script(521, "DataIn action=complete")
    assert gateway.call("setup", job_id="521", script=script, **_ids()) == (200, "")
    assert gateway.call("teardown", job_id="521", hurry="false") == (200, "")
    assert _alive(second)


def test_stopping_the_front_stops_the_worker(gateway: Gateway) -> None:
    worker = gateway.worker_pid()
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
    wait_for(lambda: not _alive(worker), timeout=15, message="the worker to exit")
    assert not gateway.socket.exists()
    assert "gateway worker stopped" in gateway.log.read_text()


def test_the_worker_exits_when_the_front_is_killed(gateway: Gateway) -> None:
    worker = gateway.worker_pid()
    gateway.proc.kill()  # no chance to stop the worker: its stdin pipe closes with the front
    gateway.proc.wait(10)
    wait_for(lambda: not _alive(worker), timeout=15, message="the worker to notice the front is gone")
    assert "gateway worker stopped" in gateway.log.read_text()


def test_a_socket_path_too_long_for_the_worker_is_refused_up_front(tmp_path: Path) -> None:
    socket = tmp_path / ("s" * max(1, 104 - len(os.fsencode(tmp_path))))  # fits; "<socket>.worker" does not
    assert len(os.fsencode(socket)) <= 107 < len(os.fsencode(socket)) + len(".worker")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "slurm", "gateway", "--kubeconfig", str(kubeconfig),
         "--namespace", "slurm", "--socket", str(socket)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "worker socket" in result.stderr and "choose a shorter --socket path" in result.stderr, (
        result.stderr
    )
