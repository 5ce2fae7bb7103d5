"""The ``slurmlink`` CLI run as subprocesses against a real server (with its in-process controllers)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from slurmlink import __version__
from slurmlink.cli.commands import all_commands
from slurmlink.client.http import HttpClient
from slurmlink.resources.dws.group import GROUP, WORKFLOW_FINALIZER
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.kind import Obj
from support.postgres import free_port
from support.server import ServerProcess

#: The installed console script, next to this interpreter (not a pyenv shim).
SCRIPT = Path(sys.executable).parent / "slurmlink"
CLI = [str(SCRIPT)]


def workflow(name: str, namespace: str, directive: str) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1alpha7",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "desiredState": "Proposal",
            "wlmID": "slurm",
            "jobID": 7,
            "userID": 1000,
            "groupID": 1000,
            "dwDirectives": [directive],
        },
    }


async def create_and_settle(kubeconfig: Path, wf: Obj, ready: bool, timeout: float = 20.0) -> Obj:
    """Create ``wf`` and watch it until the controllers have settled it (ready, or a driver error)."""
    async with HttpClient.from_kubeconfig(kubeconfig) as client:
        created = await client.create(WORKFLOW, wf)
        m = created["metadata"]
        events = await client.watch(WORKFLOW, m["namespace"], m["resourceVersion"])
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    status = event.object.get("status") or {}
                    if event.object["metadata"]["name"] != m["name"] or status.get("state") != "Proposal":
                        continue
                    if (ready and status.get("ready")) or (not ready and status.get("status") == "Error"):
                        return event.object
        finally:
            await events.aclose()  # type: ignore[attr-defined]
    raise AssertionError("the watch ended")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("cli") / "state")
    srv.start()
    try:
        asyncio.run(
            create_and_settle(
                srv.kubeconfig, workflow("cli-a", "default", "#DW Proposal action=complete"), True
            )
        )
        asyncio.run(
            create_and_settle(
                srv.kubeconfig,
                workflow("cli-b", "slurm", "#DW Proposal action=error message=disk_full severity=Fatal"),
                False,
            )
        )
        yield srv
    finally:
        srv.stop()


def cli(*args: str, kubeconfig: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURMLINK_") and k != "KUBECONFIG"}
    env["COLUMNS"] = "200"
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def flat(text: str) -> str:
    """Help text with click's wrapping undone (it also breaks lines after hyphens)."""
    return " ".join(re.sub(r"-\n\s*", "-", text).split())


def lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


# ---- no server needed --------------------------------------------------------------------------


def test_version() -> None:
    assert SCRIPT.exists(), f"the slurmlink console script is not installed next to {sys.executable}"
    result = cli("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"slurmlink {__version__}"
    flag = cli("--version")
    assert flag.returncode == 0 and __version__ in flag.stdout


def _every_command() -> list[tuple[list[str], click.Command]]:
    out: list[tuple[list[str], click.Command]] = []
    for command in all_commands():
        assert command.name
        out.append(([command.name], command))
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                out.append(([command.name, sub_name], sub))
    return out


def test_module_run_names_itself_slurmlink() -> None:
    """``python -m slurmlink.cli.main``, as scripts/quickstart runs it, prints the command's usage."""
    result = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "quickstart", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: slurmlink quickstart")


@pytest.mark.parametrize(
    ("path", "command"), _every_command(), ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_help_of_every_command(path: list[str], command: click.Command) -> None:
    result = cli(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: slurmlink {' '.join(path)}")
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in result.stdout for opt in param.opts), (param.opts, result.stdout)


def test_new_commands_are_registered_and_documented() -> None:
    names = {c.name for c in all_commands()}
    assert {"controller", "get", "describe", "watch"} <= names
    help_text = flat(cli("controller", "--help").stdout)
    for text in (
        "--kubeconfig",
        "--no-test-driver",
        "--workers",
        "PostgreSQL",
        "--no-controllers",
        "SIGTERM",
    ):
        assert text in help_text
    get_help = flat(cli("get", "--help").stdout)
    for text in ("-n, --namespace", "-A, --all-namespaces", "-o, --output", "wide|yaml|json"):
        assert text in get_help


# ---- get ---------------------------------------------------------------------------------------


def test_get_workflows_all_namespaces(server: ServerProcess) -> None:
    result = cli("get", "workflows", "-A", kubeconfig=server.kubeconfig)
    assert result.returncode == 0, result.stderr
    rows = lines(result.stdout)
    assert rows[0] == ["NAMESPACE", "NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"]
    by_name = {r[1]: r for r in rows[1:]}
    assert by_name["cli-a"][:6] == ["default", "cli-a", "Proposal", "true", "Completed", "7"]
    assert by_name["cli-b"][:6] == ["slurm", "cli-b", "Proposal", "false", "Error", "7"]
    assert not any(line != line.rstrip() for line in result.stdout.splitlines())


def test_get_defaults_to_the_context_namespace_and_accepts_kind_spellings(server: ServerProcess) -> None:
    for spelling in ("workflows", "workflow", "Workflow", "WORKFLOWS", f"workflows.{GROUP}"):
        result = cli("get", spelling, kubeconfig=server.kubeconfig)
        assert result.returncode == 0, result.stderr
        rows = lines(result.stdout)
        assert rows[0][0] == "NAME" and [r[0] for r in rows[1:]] == ["cli-a"], spelling
    slurm = cli("get", "workflows", "-n", "slurm", kubeconfig=server.kubeconfig)
    assert [r[0] for r in lines(slurm.stdout)[1:]] == ["cli-b"]
    wide = cli("get", "workflows", "-o", "wide", kubeconfig=server.kubeconfig)
    assert lines(wide.stdout)[0] == [
        "NAME",
        "STATE",
        "READY",
        "STATUS",
        "JOBID",
        "AGE",
        "DESIREDSTATE",
        "DESIREDSTATECHANGE",
        "ELAPSEDTIMELASTSTATE",
        "UID",
        "GID",
    ]
    namespaces = cli("get", "ns", kubeconfig=server.kubeconfig)
    assert {"default", "dws-system", "slurm"} <= {r[0] for r in lines(namespaces.stdout)[1:]}
    assert lines(namespaces.stdout)[0] == ["NAME", "STATUS", "AGE"]
    computes = cli("get", "computes", "-A", kubeconfig=server.kubeconfig)
    assert lines(computes.stdout)[0] == ["NAMESPACE", "NAME", "AGE"]
    empty = cli("get", "dwdirectiverules", kubeconfig=server.kubeconfig)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.strip() == "No resources found in default namespace."


def test_get_workflow_as_yaml_and_json(server: ServerProcess) -> None:
    result = cli("get", "workflow", "cli-a", "-o", "yaml", kubeconfig=server.kubeconfig)
    assert result.returncode == 0, result.stderr
    obj = yaml.safe_load(result.stdout)
    assert obj["kind"] == "Workflow" and obj["apiVersion"] == f"{GROUP}/v1alpha7"
    assert obj["metadata"]["name"] == "cli-a" and obj["metadata"]["namespace"] == "default"
    assert obj["metadata"]["finalizers"] == [WORKFLOW_FINALIZER]
    assert obj["status"]["ready"] is True and obj["status"]["state"] == "Proposal"
    listed = json.loads(cli("get", "workflows", "-A", "-o", "json", kubeconfig=server.kubeconfig).stdout)
    assert listed["kind"] == "List"
    assert {i["metadata"]["name"] for i in listed["items"]} >= {"cli-a", "cli-b"}
    names = cli("get", "workflows", "-A", "-o", "name", kubeconfig=server.kubeconfig).stdout.split()
    assert f"workflows.{GROUP}/cli-a" in names


# ---- describe ----------------------------------------------------------------------------------


def test_describe_workflow(server: ServerProcess) -> None:
    result = cli("describe", "workflow", "cli-b", "-n", "slurm", kubeconfig=server.kubeconfig)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label, value in (("Name:", "cli-b"), ("Namespace:", "slurm"), ("Kind:", "Workflow")):
        assert any(line.split()[:2] == [label, value] for line in out.splitlines() if line.strip()), label
    assert WORKFLOW_FINALIZER in out
    for section in ("Spec:", "Status:", "Drivers:"):
        assert f"\n{section}\n" in out
    assert "  desiredState: Proposal" in out
    assert "  status: Error" in out
    drivers = out.split("\nDrivers:\n", 1)[1].splitlines()
    assert drivers[0].split() == [
        "DWD",
        "INDEX",
        "DRIVER",
        "ID",
        "WATCH",
        "STATE",
        "STATUS",
        "COMPLETED",
        "MESSAGE",
        "/",
        "ERROR",
    ]
    assert drivers[1].split()[:5] == ["0", "tester", "Proposal", "Error", "false"]
    assert "Reported error: disk_full (error: disk full)" in drivers[1]
    # Drivers are shown as the table, not repeated in the status YAML.
    assert "driverID" not in out


# ---- watch -------------------------------------------------------------------------------------


def _reader(stream: object) -> queue.Queue[str]:
    lines_q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
            lines_q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines_q


def _expect_line(q: queue.Queue[str], predicate: object, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if predicate(line.split()):  # type: ignore[operator]
            return line.split()
    raise AssertionError(f"no matching watch line in {timeout}s; got:\n{''.join(seen)}")


def test_watch_prints_one_line_per_event_until_interrupted(server: ServerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURMLINK_")}
    env["KUBECONFIG"] = str(server.kubeconfig)
    proc = subprocess.Popen(
        [*CLI, "watch", "workflows"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        q = _reader(proc.stdout)
        header = _expect_line(q, lambda w: w[:1] == ["EVENT"])
        assert header == ["EVENT", "NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"]
        _expect_line(q, lambda w: w[:2] == ["ADDED", "cli-a"])
        asyncio.run(
            create_and_settle(
                server.kubeconfig, workflow("cli-w", "default", "#DW Proposal action=complete"), True
            )
        )
        _expect_line(q, lambda w: w[:2] == ["ADDED", "cli-w"])
        done = _expect_line(q, lambda w: w[:2] == ["MODIFIED", "cli-w"] and "Completed" in w)
        assert done[2:5] == ["Proposal", "true", "Completed"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ---- kubeconfig --------------------------------------------------------------------------------


def test_kubeconfig_for_the_workload_manager(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "slurm-dws.kubeconfig"
    result = cli(
        "kubeconfig",
        "--user",
        "slurm-dws",
        "--role",
        "workload-manager",
        "--namespace",
        "slurm",
        "--state-dir",
        str(server.state_dir),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # Usable: its context's namespace is the default, its role may read.
    listed = cli("get", "workflows", kubeconfig=out)
    assert listed.returncode == 0, listed.stderr
    assert [r[0] for r in lines(listed.stdout)[1:]] == ["cli-b"]
    described = cli("describe", "workflow", "cli-b", "--kubeconfig", str(out))
    assert described.returncode == 0, described.stderr


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_kind(server: ServerProcess) -> None:
    result = cli("get", "gizmos", kubeconfig=server.kubeconfig)
    assert result.returncode == 1
    assert result.stderr.strip() == 'error: the server doesn\'t have a resource type "gizmos"'
    assert result.stdout == ""


def test_missing_object(server: ServerProcess) -> None:
    for args in (
        ("get", "workflow", "nope"),
        ("describe", "workflow", "nope"),
        ("get", "workflow", "nope", "-o", "yaml"),
    ):
        result = cli(*args, kubeconfig=server.kubeconfig)
        assert result.returncode == 1, args
        assert result.stderr.strip() == f'Error from server (NotFound): workflows.{GROUP} "nope" not found'
        assert result.stdout == ""


def test_unreachable_server_and_missing_kubeconfig(server: ServerProcess, tmp_path: Path) -> None:
    text = server.kubeconfig.read_text().replace(server.url, f"https://127.0.0.1:{free_port()}")
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(text)
    start = time.monotonic()
    result = cli("get", "workflows", kubeconfig=dead)
    assert time.monotonic() - start < 15
    assert result.returncode == 1
    url = yaml.safe_load(text)["clusters"][0]["cluster"]["server"]
    assert result.stderr.strip() == f"error: cannot reach the slurmlink API at {url}: connection refused"

    missing = cli("get", "workflows", "--kubeconfig", str(tmp_path / "none"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: kubeconfig {tmp_path / 'none'} does not exist"

    by_name_everywhere = cli("get", "workflow", "cli-a", "-A", kubeconfig=server.kubeconfig)
    assert by_name_everywhere.returncode == 1
    assert "cannot be retrieved by name across all namespaces" in by_name_everywhere.stderr


def _nice_of(pid: int) -> int:
    # /proc/PID/stat: the 19th field is the nice value (after "pid (comm)", which may hold spaces).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_serve_nice_lowers_the_servers_cpu_priority(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "state", extra_args=("--nice", "4")).start()
    try:
        assert srv.proc is not None
        assert _nice_of(srv.proc.pid) == _nice_of(os.getpid()) + 4
        assert "lowered CPU priority: nice" in srv.log_tail()
    finally:
        srv.stop()


def test_serve_refuses_a_nice_value_out_of_range(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slurmlink.cli.main", "serve", "--state-dir", str(tmp_path), "--nice", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--nice" in result.stderr and "0<=x<=19" in result.stderr
