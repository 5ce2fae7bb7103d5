"""The test driver's decision function ``drive()`` (specs/dws.md §4).

The first group mirrors dws-test-driver's Ginkgo tests (internal/controller/workflow_controller_test.go):
a workflow in Proposal with one ``#DW Proposal ...`` directive, and the tester's entry as expected
afterwards. The rest pins down the reconcile rules around them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from slurmlink.controllers.testdriver import DRIVER_ID, SeverityError, drive, severity_to_status

Obj = dict[str, Any]
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def registered(index: int, state: str, driver: str = DRIVER_ID, **extra: Any) -> Obj:
    """An entry as the mutating webhook registers it."""
    return {
        "driverID": driver,
        "taskID": "",
        "dwdIndex": index,
        "watchState": state,
        "lastHB": 0,
        "completed": False,
        "status": "Pending",
        **extra,
    }


def workflow(directives: list[str], drivers: list[Obj] | None = None, *, state: str = "Proposal") -> Obj:
    """A workflow whose ``state`` has just been adopted by the DWS controller (not ready)."""
    if drivers is None:
        drivers = [registered(i, d.split()[1]) for i, d in enumerate(directives)]
    return {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "metadata": {"name": "test-workflow-1", "namespace": "default", "resourceVersion": "7"},
        "spec": {
            "desiredState": state,
            "wlmID": "test",
            "jobID": "wlm job 442",
            "userID": 0,
            "groupID": 0,
            "dwDirectives": directives,
        },
        "status": {"state": state, "ready": False, "status": "DriverWait", "message": "", "drivers": drivers},
    }


def drivers_after(wf: Obj) -> list[Obj]:
    out = drive(wf)
    assert out is not None, "the driver changed nothing"
    return list(out["status"]["drivers"])


# --------------------------------------------------------------------------------------------------
# The upstream Ginkgo cases
# --------------------------------------------------------------------------------------------------


def test_can_complete_workflow_driver_states() -> None:
    [entry] = drivers_after(workflow(["#DW Proposal action=complete"]))
    complete_time = entry.pop("completeTime")
    assert MICROTIME.match(complete_time)
    assert entry == {
        "driverID": "tester",
        "taskID": "",
        "dwdIndex": 0,
        "watchState": "Proposal",
        "lastHB": 0,
        "completed": True,
        "status": "Completed",
    }


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("", "Running"),  # without a specified severity
        ("Minor", "Running"),
        ("Major", "TransientCondition"),
        ("Fatal", "Error"),
    ],
)
def test_can_set_workflow_driver_errors(severity: str, expected: str) -> None:
    line = "#DW Proposal action=error message=Test_error_message"
    if severity:
        line += f" severity={severity}"
    [entry] = drivers_after(workflow([line]))
    assert entry == {
        "driverID": "tester",
        "taskID": "",
        "dwdIndex": 0,
        "watchState": "Proposal",
        "lastHB": 0,
        "completed": False,
        "status": expected,
        "message": "Reported error: Test_error_message",
        "error": "Test error message",
    }


def test_can_no_op_workflow_driver_statuses() -> None:
    wf = workflow(["#DW Proposal action=wait"])
    assert drive(wf) is None
    assert wf["status"]["drivers"] == [registered(0, "Proposal")]


# --------------------------------------------------------------------------------------------------
# When the driver acts at all
# --------------------------------------------------------------------------------------------------


def test_skips_a_workflow_being_deleted() -> None:
    wf = workflow(["#DW Proposal action=complete"])
    wf["metadata"]["deletionTimestamp"] = "2024-04-01T00:00:00Z"
    assert drive(wf) is None


def test_skips_a_ready_workflow() -> None:
    wf = workflow(["#DW Proposal action=complete"])
    wf["status"]["ready"] = True
    assert drive(wf) is None


@pytest.mark.parametrize("adopted", [None, "", "Proposal"])
def test_skips_while_the_state_is_changing(adopted: str | None) -> None:
    wf = workflow(["#DW Proposal action=complete", "#DW Setup action=complete"])
    wf["spec"]["desiredState"] = "Setup"
    if adopted is None:
        del wf["status"]["state"]
    else:
        wf["status"]["state"] = adopted
    assert drive(wf) is None


def test_skips_a_workflow_without_status() -> None:
    wf = workflow(["#DW Proposal action=complete"])
    del wf["status"]
    assert drive(wf) is None


def test_acts_only_on_its_own_entries_for_the_desired_state() -> None:
    directives = ["#DW Proposal action=complete", "#DW Setup action=complete", "#DW jobdw capacity=1GiB"]
    drivers = [
        registered(1, "Setup"),
        registered(2, "Proposal", driver="nnf"),
        registered(0, "Proposal"),
    ]
    out = drivers_after(workflow(directives, drivers))
    assert out[0] == registered(1, "Setup")
    assert out[1] == registered(2, "Proposal", driver="nnf")
    assert (out[2]["status"], out[2]["completed"]) == ("Completed", True)


def test_completed_and_error_entries_are_left_alone() -> None:
    directives = ["#DW Proposal action=complete", "#DW Proposal action=error message=x severity=Minor"]
    done = registered(
        0, "Proposal", completed=True, status="Completed", completeTime="2024-04-01T00:00:00.000000Z"
    )
    failed = registered(1, "Proposal", status="Error", message="Reported error: by hand", error="by hand")
    wf = workflow(directives, [done, failed])
    assert drive(wf) is None


def test_running_and_transient_entries_are_reevaluated() -> None:
    """Only Error (and completed) entries are skipped; others are recomputed from the directive."""
    directives = ["#DW Proposal action=error message=a_b severity=Major"]
    wf = workflow(directives, [registered(0, "Proposal", status="Running", message="stale", error="stale")])
    [entry] = drivers_after(wf)
    assert (entry["status"], entry["message"], entry["error"]) == (
        "TransientCondition",
        "Reported error: a_b",
        "a b",
    )


# --------------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------------


def test_every_entry_of_the_state_is_handled() -> None:
    directives = [
        "#DW DataIn action=complete",
        "#DW DataIn action=wait",
        "#DW DataIn action=error message=TEST_FATAL_ERROR severity=Fatal",
    ]
    out = drivers_after(workflow(directives, state="DataIn"))
    assert [(e["status"], e["completed"]) for e in out] == [
        ("Completed", True),
        ("Pending", False),
        ("Error", False),
    ]
    assert out[2]["error"] == "TEST FATAL ERROR"
    assert out[2]["message"] == "Reported error: TEST_FATAL_ERROR"


def test_error_without_message() -> None:
    [entry] = drivers_after(workflow(["#DW Proposal action=error severity=Major"]))
    assert (entry["status"], entry["message"], entry["error"]) == (
        "TransientCondition",
        "Reported error: ",
        "",
    )


@pytest.mark.parametrize("severity", ["fatal", "FATAL", "fAtAl"])
def test_severity_is_case_insensitive(severity: str) -> None:
    [entry] = drivers_after(workflow([f"#DW Proposal action=error message=m severity={severity}"]))
    assert entry["status"] == "Error"


def test_unknown_severity() -> None:
    [entry] = drivers_after(workflow(["#DW Proposal action=error message=TEST_FATAL_ERROR severity=Cosmic"]))
    assert entry == registered(
        0,
        "Proposal",
        status="Error",
        message="Internal error: unknown severity: Cosmic",
        error="unknown severity: Cosmic",
    )


def test_underscores_become_spaces_only_in_error() -> None:
    [entry] = drivers_after(
        workflow(["#DW Proposal action=error message=__rename_permission_denied_ severity=Fatal"])
    )
    assert entry["message"] == "Reported error: __rename_permission_denied_"
    assert entry["error"] == "  rename permission denied "


def test_unknown_action_stops_the_pass() -> None:
    """Upstream returns from the reconcile on an unsupported action: that entry stays Pending and later
    entries wait for the next pass (which stops there again); earlier ones are still written."""
    directives = ["#DW Proposal action=complete", "#DW Proposal action=dance", "#DW Proposal action=complete"]
    out = drivers_after(workflow(directives))
    assert [(e["status"], e["completed"]) for e in out] == [
        ("Completed", True),
        ("Pending", False),
        ("Pending", False),
    ]
    assert drive(workflow(directives[1:2])) is None


def test_entry_pointing_at_a_missing_directive_is_ignored() -> None:
    wf = workflow(["#DW Proposal action=complete"], [registered(3, "Proposal")])
    assert drive(wf) is None


def test_drive_returns_a_copy_and_is_idempotent() -> None:
    wf = workflow(["#DW Proposal action=error message=m severity=Major", "#DW Proposal action=wait"])
    original = copy.deepcopy(wf)
    out = drive(wf)
    assert wf == original
    assert out is not None and out is not wf
    assert drive(out) is None  # nothing left to change: no write, no event loop
    assert out["metadata"] == wf["metadata"]  # the update is conditional on the read resourceVersion
    assert out["spec"] == wf["spec"]


# --------------------------------------------------------------------------------------------------
# SeverityStringToStatus
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "status"),
    [
        ("", "Running"),
        ("minor", "Running"),
        ("Minor", "Running"),
        ("MAJOR", "TransientCondition"),
        ("Fatal", "Error"),
    ],
)
def test_severity_to_status(severity: str, status: str) -> None:
    assert severity_to_status(severity) == status


def test_severity_to_status_unknown() -> None:
    with pytest.raises(SeverityError) as info:
        severity_to_status("Severe")
    assert str(info.value) == "unknown severity: Severe"
