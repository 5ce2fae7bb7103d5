"""The seed's playground exercises 1 and 2 (dws-slurm-bb-plugin README), driven through the API.

Slurm's part (moving ``desiredState`` one state at a time, as the burst buffer plugin does) is played
by kubectl patches here; the same exercises run on a real Slurm in tests/slurm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.kubectl import release_patch, run_kubectl
from support.waiting import wait_for

WF = "workflows.dataworkflowservices.github.io"
STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]


class Plugin:
    """What burst_buffer.lua does with kubectl: create, advance, wait, read status."""

    def __init__(self, kubectl: Path, kubeconfig: Path, workdir: Path) -> None:
        self.kubectl, self.kubeconfig, self.workdir = kubectl, kubeconfig, workdir

    def run(self, *args: str) -> str:
        result = run_kubectl(self.kubectl, self.kubeconfig, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def submit(self, job: int, directives: list[str]) -> str:
        name = f"bb{job}"
        manifest = {
            "apiVersion": "dataworkflowservices.github.io/v1alpha2",
            "kind": "Workflow",
            "metadata": {"name": name, "labels": {"origin": "burst_buffer.lua"}},
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": directives,
                "wlmID": "slurm",
                "jobID": str(job),
                "userID": 1001,
                "groupID": 1001,
            },
        }
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        self.run("apply", "-f", str(path))
        return name

    def doc(self, name: str) -> dict:
        return yaml.safe_load(self.run("get", "workflow", "-n", "slurm", name, "-o", "yaml"))

    def wait(self, name: str, state: str, status: str) -> dict:
        return wait_for(
            lambda: (
                (d := self.doc(name))["status"].get("state") == state
                and d["status"].get("status") == status
                and d
            ),
            timeout=15,
            message=f"{name} {state}/{status}",
        )

    def advance_to(self, name: str, target: str) -> None:
        """Move state by state up to ``target``, each time once the previous one is Completed."""
        current = self.doc(name)["status"].get("state") or "Proposal"
        for state in STATES[STATES.index(current) + 1 : STATES.index(target) + 1]:
            self.wait(name, STATES[STATES.index(state) - 1], "Completed")
            self.run("patch", WF, name, "--type=merge", "-p", f'{{"spec":{{"desiredState":"{state}"}}}}')


@pytest.fixture
def plugin(kubectl_120: Path, wlm_kubeconfig: Path, tmp_path: Path) -> Plugin:
    return Plugin(kubectl_120, wlm_kubeconfig, tmp_path)


def test_exercise_1_driver_wait_in_data_out(plugin: Plugin) -> None:
    name = plugin.submit(12, ["#DW DataOut action=wait"])
    plugin.advance_to(name, "DataOut")
    waiting = plugin.wait(name, "DataOut", "DriverWait")
    assert waiting["status"]["ready"] is False
    plugin.run(
        "patch",
        "workflow",
        "-n",
        "slurm",
        name,
        "--type=json",
        "-p",
        release_patch(0),
    )
    plugin.wait(name, "DataOut", "Completed")
    plugin.advance_to(name, "Teardown")
    plugin.wait(name, "Teardown", "Completed")
    plugin.run("delete", WF, name)
    assert run_kubectl(plugin.kubectl, plugin.kubeconfig, "get", WF, name).returncode == 1


def test_exercise_2_major_error_then_teardown_wait(plugin: Plugin) -> None:
    name = plugin.submit(
        3,
        [
            "#DW DataOut action=error message=johnson_rod_misalignment severity=Major",
            "#DW Teardown action=wait",
        ],
    )
    plugin.advance_to(name, "DataOut")
    doc = plugin.wait(name, "DataOut", "TransientCondition")
    assert doc["status"]["message"] == "DW Directive 0: Reported error: johnson_rod_misalignment"
    entry = doc["status"]["drivers"][0]
    assert entry["status"] == "TransientCondition" and entry["error"] == "johnson rod misalignment"
    assert entry["completed"] is False and doc["status"]["ready"] is False

    plugin.run(
        "patch",
        "workflow",
        "-n",
        "slurm",
        name,
        "--type=json",
        "-p",
        release_patch(0, clear_error=True),
    )
    cleared = plugin.wait(name, "DataOut", "Completed")
    assert "error" not in cleared["status"]["drivers"][0] and cleared["status"]["ready"] is True

    plugin.advance_to(name, "Teardown")
    teardown = plugin.wait(name, "Teardown", "DriverWait")
    assert teardown["status"]["drivers"][1]["status"] == "Pending"
    plugin.run(
        "patch",
        "workflow",
        "-n",
        "slurm",
        name,
        "--type=json",
        "-p",
        release_patch(1),
    )
    plugin.wait(name, "Teardown", "Completed")
    plugin.run("delete", WF, name)
