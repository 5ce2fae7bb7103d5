"""Two ``slurmlink controller`` processes against two API replicas on one PostgreSQL: one leads.

The acceptance test for availability: exactly one controller holds the ``coordination.k8s.io/v1``
Lease (kubectl shows it); Workflows are driven; the holder is killed with SIGKILL in the middle of
several Workflows; the standby takes over once the lease expires and every Workflow completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.waiting import wait_for
from support.workflows import GROUP_VERSION, workflow

pytestmark = pytest.mark.postgres

WORKFLOWS = f"/apis/{GROUP_VERSION}/namespaces/slurm/workflows"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/dws-system/leases/slurmlink-controllers"
MERGE = {"content-type": "application/merge-patch+json"}
JSON_PATCH = {"content-type": "application/json-patch+json"}
STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
LEASE_DURATION = 12.0
#: The acceptance bound: a standby leads within this many seconds of the leader's SIGKILL.
TAKEOVER_BOUND = 15.0


class ControllerProcess:
    """``slurmlink controller`` with default leader election, logging to a file."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slurmlink.cli.main",
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--log-format",
                "console",
            ],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owns(self, holder: str) -> bool:
        """Whether ``holder`` is this process's default identity (hostname_pid_uuid)."""
        return f"_{self.proc.pid}_" in holder

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


@pytest.fixture
def replicas(postgres_dsn: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    servers = [
        ServerProcess(tmp_path / f"replica{i}", store=postgres_dsn, extra_args=("--no-controllers",))
        for i in range(2)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def holder(client: httpx.Client) -> str:
    r = client.get(LEASE)
    return str(r.json()["spec"].get("holderIdentity") or "") if r.status_code == 200 else ""


def status(client: httpx.Client, name: str) -> dict[str, Any]:
    r = client.get(f"{WORKFLOWS}/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json().get("status") or {})


def ready_in(client: httpx.Client, name: str, state: str, timeout: float = 30.0) -> None:
    def check() -> bool:
        st = status(client, name)
        return st.get("state") == state and st.get("ready") is True and st.get("status") == "Completed"

    wait_for(check, timeout, interval=0.05, message=f"{name} ready in {state}")


def advance(client: httpx.Client, name: str, state: str) -> None:
    r = client.patch(f"{WORKFLOWS}/{name}", json={"spec": {"desiredState": state}}, headers=MERGE)
    assert r.status_code == 200, r.text


def release_setup(client: httpx.Client, name: str) -> None:
    """Complete the ``#DW Setup action=wait`` driver entry (index 1), as an operator would."""
    ops = [
        {"op": "replace", "path": "/status/drivers/1/status", "value": "Completed"},
        {"op": "replace", "path": "/status/drivers/1/completed", "value": True},
    ]
    r = client.patch(f"{WORKFLOWS}/{name}", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text


def test_the_standby_takes_over_when_the_leader_is_killed(
    replicas: list[ServerProcess], kubectl_132: Path, tmp_path: Path
) -> None:
    one, two = replicas
    controllers = [
        ControllerProcess(one.kubeconfig, tmp_path / "controller-a.log"),
        ControllerProcess(two.kubeconfig, tmp_path / "controller-b.log"),
    ]
    try:
        with one.client() as c1, two.client() as c2:
            first = wait_for(lambda: holder(c1), 30, interval=0.05, message="a lease holder")
            leader = next(c for c in controllers if c.owns(first))
            standby = next(c for c in controllers if c is not leader)
            # Both are synced and campaigning; only one leads.
            wait_for(lambda: all("controllers synced" in c.log for c in controllers), 30, message="sync")
            assert "became leader" in leader.log and "became leader" not in standby.log

            table = run_kubectl(kubectl_132, two.kubeconfig, "get", "leases", "-A")
            assert table.returncode == 0, table.stderr
            header, *rows = table.stdout.splitlines()
            assert header.split() == ["NAMESPACE", "NAME", "HOLDER", "AGE"]
            assert ["dws-system", "slurmlink-controllers", first] in [row.split()[:3] for row in rows]

            # Six workflows in flight: three wait on an operator in Setup, three are ready in DataIn.
            waiting = [f"wait{i}" for i in range(3)]
            moving = [f"move{i}" for i in range(3)]
            for name in waiting:
                r = c1.post(
                    WORKFLOWS, json=workflow(name, ["#DW Proposal action=complete", "#DW Setup action=wait"])
                )
                assert r.status_code == 201, r.text
            for name in moving:
                r = c2.post(WORKFLOWS, json=workflow(name, ["#DW Proposal action=complete"]))
                assert r.status_code == 201, r.text
            for name in waiting + moving:
                ready_in(c1, name, "Proposal")
                advance(c2, name, "Setup")
            for name in moving:
                ready_in(c1, name, "Setup")
                advance(c1, name, "DataIn")
                ready_in(c2, name, "DataIn")
            for name in waiting:
                wait_for(
                    lambda n=name: status(c1, n).get("status") == "DriverWait",  # type: ignore[misc]
                    15,
                    message=f"{name} waiting in Setup",
                )

            leader.kill()
            killed = time.monotonic()
            # Work the old leader can no longer do: queued now, done by the successor.
            for name in moving:
                advance(c1, name, "PreRun")
            for name in waiting:
                release_setup(c2, name)

            def taken_over() -> str:
                current = holder(c2)
                return current if current and standby.owns(current) else ""

            second = wait_for(taken_over, LEASE_DURATION + 10, interval=0.02, message="the standby to lead")
            takeover = time.monotonic() - killed
            print(f"\ntakeover after SIGKILL of the leader: {takeover:.2f} s")
            # The standby waits a full lease duration from the last renewal it saw, and no longer.
            assert takeover <= TAKEOVER_BOUND, takeover
            lease = c1.get(LEASE).json()["spec"]
            assert lease["holderIdentity"] == second and lease["leaseTransitions"] == 1

            # Every workflow in flight completes under the new leader.
            for name in moving:
                ready_in(c2, name, "PreRun")
            for name in waiting:
                ready_in(c1, name, "Setup")
            for name in waiting + moving:
                start = STATES.index(status(c1, name)["state"]) + 1
                for state in STATES[start:]:
                    advance(c1 if state in ("DataIn", "PostRun", "Teardown") else c2, name, state)
                    ready_in(c2, name, state)
            for name in waiting + moving:
                assert c1.delete(f"{WORKFLOWS}/{name}").status_code in (200, 202)
            wait_for(
                lambda: not c2.get(WORKFLOWS).json()["items"], 30, message="every workflow finalized and gone"
            )

        # A clean shutdown releases the lease.
        assert standby.stop() == 0
        with one.client() as c1:
            assert holder(c1) == ""
        assert "released lease" in standby.log and "Traceback" not in standby.log
    finally:
        for controller in controllers:
            if controller.proc.poll() is None:
                controller.kill()
