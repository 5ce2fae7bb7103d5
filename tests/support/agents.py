"""Real ``slurmlink agent`` processes for tests, and reading what they registered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from support.waiting import wait_for

G = "dataworkflowservices.github.io"
STORAGES = f"/apis/{G}/v1alpha7/namespaces/default/storages"
NODE_LEASES = "/apis/coordination.k8s.io/v1/namespaces/slurmlink-node-lease/leases"
POOLS = "/apis/slurmlink.io/v1/storagepools"


class AgentProcess:
    """``slurmlink agent --node NODE ...`` in its own session, output in ``log``.

    ``prefix`` runs it under another program that execs it (``unshare --mount ...``), so the pid is the
    agent's and ``kill9`` is a crash.
    """

    def __init__(
        self, node: str, kubeconfig: Path, args: Sequence[str], log: Path, prefix: Sequence[str] = ()
    ):
        self.node = node
        self.kubeconfig = kubeconfig
        self.args = list(args)
        self.log = log
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            *self.prefix,
            sys.executable,
            *("-m", "slurmlink.cli.main", "agent", "--node", self.node),
            *("--kubeconfig", str(self.kubeconfig), "--log-format", "console"),
            *self.args,
        ]

    def start(self) -> AgentProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        wait_for(lambda: needle in self.text(), timeout, message=f"{needle!r} in {self.log}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def storage(client: httpx.Client, name: str) -> dict[str, Any] | None:
    r = client.get(f"{STORAGES}/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_storage(client: httpx.Client, name: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    """The Storage once its ``status.status`` is ``status``."""

    def probe() -> dict[str, Any] | None:
        obj = storage(client, name)
        return obj if obj is not None and (obj.get("status") or {}).get("status") == status else None

    return wait_for(probe, timeout, interval=0.05, message=f"Storage {name} to be {status}")


def lease(client: httpx.Client, name: str) -> dict[str, Any] | None:
    r = client.get(f"{NODE_LEASES}/{name}")
    return dict(r.json()) if r.status_code == 200 else None


def loop_devices(file: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--associated", str(file), "--noheadings", "--output", "NAME"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]
