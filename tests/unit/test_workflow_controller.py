"""The DWS Workflow controller: the roll-up table, Go durations, and real reconciles.

The end-to-end tests run the real ``ControllerRunner``s (workflow controller + test driver) with an
``InProcessClient`` over a real SQLite store and watch hub, inside ``asyncio.run``; they wait on
the store with deadlines (never a bare sleep standing in for synchronisation). Expected values come
from specs/dws.md §1.7, §2.2, §2.3 and §4.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.controllers.runtime import ControllerRunner
from slurmlink.controllers.testdriver import TestDriverReconciler
from slurmlink.controllers.workflow import (
    WorkflowReconciler,
    go_duration,
    roll_up,
    settle_in_driver_write,
    status_priority,
)
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.group import WORKFLOW_FINALIZER
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.patching import JSON_PATCH, MERGE
from slurmlink.server import bootstrap
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from support.waiting import eventually

Obj = dict[str, Any]
T = TypeVar("T")

NS = "slurm"
GROUP = "dataworkflowservices.github.io"
FINALIZER = f"{GROUP}/workflow"
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
GO_DURATION = re.compile(r"^(0s|\d+µs|\d+(\.\d+)?ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


# --------------------------------------------------------------------------------------------------
# roll_up: the aggregation table (specs/dws.md §2.2 step 7)
# --------------------------------------------------------------------------------------------------


def entry(
    index: int, status: str | None, *, completed: bool = False, message: str = "", state: str = "Proposal"
) -> Obj:
    out: Obj = {
        "driverID": "d",
        "taskID": "",
        "dwdIndex": index,
        "watchState": state,
        "lastHB": 0,
        "completed": completed,
    }
    if status is not None:
        out["status"] = status
    if message:
        out["message"] = message
    return out


def rolled(*drivers: Obj, state: str = "Proposal") -> tuple[bool, str, str]:
    status: dict[str, object] = {"state": state, "ready": False, "status": "DriverWait", "message": "stale"}
    roll_up(status, list(drivers))
    return status["ready"], status["status"], status["message"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("drivers", "expected"),
    [
        # no drivers for the current state: ready at once
        ((), (True, "Completed", "")),
        ((entry(0, "Pending", state="Teardown"),), (True, "Completed", "")),
        # the running-ish statuses all show as DriverWait
        ((entry(0, "Pending"),), (False, "DriverWait", "")),
        ((entry(0, "Queued"),), (False, "DriverWait", "")),
        ((entry(0, "Running", message="copying"),), (False, "DriverWait", "DW Directive 0: copying")),
        ((entry(0, "DriverWait"),), (False, "DriverWait", "")),
        # Completed: ready only if the entry is also marked completed (the Lua plugin reads status only)
        ((entry(0, "Completed", completed=True),), (True, "Completed", "")),
        ((entry(0, "Completed"),), (False, "Completed", "")),
        (
            (entry(0, "Completed", completed=True, message="done"),),
            (True, "Completed", "DW Directive 0: done"),
        ),
        # priority: Error > TransientCondition > running-ish > Completed; message from the top only
        (
            (
                entry(0, "Running", message="a"),
                entry(1, "Error", message="b"),
                entry(2, "TransientCondition", message="c"),
            ),
            (False, "Error", "DW Directive 1: b"),
        ),
        (
            (entry(0, "Completed", completed=True, message="a"), entry(1, "TransientCondition", message="t")),
            (False, "TransientCondition", "DW Directive 1: t"),
        ),
        (
            (entry(0, "Completed", completed=True, message="a"), entry(3, "Pending", message="waiting")),
            (False, "DriverWait", "DW Directive 3: waiting"),
        ),
        # several top entries: the last non-empty message (in list order) wins, an empty one keeps it
        (
            (entry(0, "Error", message="first"), entry(1, "Error", message="second"), entry(2, "Error")),
            (False, "Error", "DW Directive 1: second"),
        ),
        (
            (
                entry(4, "Queued", message="q"),
                entry(2, "Running", message="r"),
                entry(1, "Completed", completed=True),
            ),
            (False, "DriverWait", "DW Directive 2: r"),
        ),
        # entries of other states do not count, whatever they say
        (
            (entry(0, "Error", message="old", state="Setup"), entry(1, "Completed", completed=True)),
            (True, "Completed", ""),
        ),
        (
            (entry(0, "Completed", completed=True), entry(1, "Completed", completed=True)),
            (True, "Completed", ""),
        ),
    ],
)
def test_roll_up_table(drivers: tuple[Obj, ...], expected: tuple[bool, str, str]) -> None:
    assert rolled(*drivers) == expected


def test_roll_up_checks_completed_up_to_the_first_lower_entry() -> None:
    """Upstream clears ``ready`` before testing the priority, then stops: the first lower-priority
    entry still counts, later ones do not."""
    assert rolled(entry(0, "Running", completed=True), entry(1, "Completed")) == (False, "DriverWait", "")
    assert rolled(
        entry(0, "Running", completed=True), entry(1, "Completed", completed=True), entry(2, "Completed")
    ) == (True, "DriverWait", "")


def test_roll_up_uses_the_current_state() -> None:
    drivers = (entry(0, "Pending", state="Proposal"), entry(1, "Error", message="x", state="DataIn"))
    assert rolled(*drivers, state="DataIn") == (False, "Error", "DW Directive 1: x")
    assert rolled(*drivers, state="Setup") == (True, "Completed", "")


@pytest.mark.parametrize("bad", [None, "", "Fatal", "completed"])
def test_roll_up_unknown_status_fails_like_upstreams_panic(bad: str | None) -> None:
    with pytest.raises(ValueError, match="unknown driver status"):
        rolled(entry(0, bad))
    with pytest.raises(ValueError):
        rolled(entry(0, "Error"), entry(1, bad))
    # only the current state's entries are looked at
    assert rolled(entry(0, bad, state="Teardown")) == (True, "Completed", "")


def test_status_priority_values() -> None:
    assert [status_priority(s) for s in ("Completed", "Pending", "Queued", "Running", "DriverWait")] == [
        1,
        2,
        2,
        2,
        2,
    ]
    assert (status_priority("TransientCondition"), status_priority("Error")) == (3, 4)


# --------------------------------------------------------------------------------------------------
# go_duration: Go's Duration.Round(time.Microsecond).String()
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "text"),
    [
        (0, "0s"),
        (0.0000004, "0s"),
        (0.0000005, "1µs"),  # Round: halves away from zero
        (0.0000025, "3µs"),
        (0.000001, "1µs"),
        (0.0005, "500µs"),
        (0.000999, "999µs"),
        (0.001, "1ms"),
        (0.0015, "1.5ms"),
        (0.006527, "6.527ms"),
        (0.022437, "22.437ms"),
        (0.999999, "999.999ms"),
        (0.9999995, "1s"),
        (1, "1s"),
        (1.503422, "1.503422s"),
        (10.5, "10.5s"),
        (59.9999999, "1m0s"),
        (60, "1m0s"),
        (62.5, "1m2.5s"),
        (3599.000001, "59m59.000001s"),
        (3600, "1h0m0s"),
        (3661.25, "1h1m1.25s"),
        (90000, "25h0m0s"),
        (-1.5, "-1.5s"),
        (-0.0000025, "-3µs"),
        (-0.006527, "-6.527ms"),
        (dt.timedelta(days=1, microseconds=1), "24h0m0.000001s"),
        (dt.timedelta(milliseconds=6, microseconds=527), "6.527ms"),
        (dt.timedelta(seconds=-62, microseconds=-500_000), "-1m2.5s"),
    ],
)
def test_go_duration(elapsed: float | dt.timedelta, text: str) -> None:
    assert go_duration(elapsed) == text


def test_go_duration_uses_the_micro_sign() -> None:
    assert go_duration(0.0005).encode() == b"500\xc2\xb5s"  # U+00B5, as Go prints it


# --------------------------------------------------------------------------------------------------
# End to end: real runners, real store
# --------------------------------------------------------------------------------------------------


class Cluster:
    """A store, watch hub, service and the two controllers, all in one event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = SqlStore(f"sqlite:///{tmp_path}/db")
        self.hub = WatchHub(self.store)
        self.svc = ResourceService(self.store, default_registry(), self.hub)
        bootstrap(self.svc, ServerConfig(state_dir=tmp_path))
        self.runners: list[ControllerRunner] = []

    async def start(self) -> None:
        await self.hub.start()
        client = InProcessClient(self.svc)
        self.runners = [
            ControllerRunner(client, WorkflowReconciler(), workers=4),
            ControllerRunner(client, TestDriverReconciler(), workers=2),
        ]
        for runner in self.runners:
            runner.start()
        for runner in self.runners:
            await runner.wait_synced(10)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.stop()
        await self.hub.stop()
        self.store.close()

    # ---- API calls, as a client would make them ----

    def create(self, name: str, directives: list[str], **spec: Any) -> Obj:
        body: Obj = {
            "apiVersion": f"{GROUP}/v1alpha2",
            "kind": "Workflow",
            "metadata": {"name": name, "labels": {"origin": "burst_buffer.lua"}},
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": directives,
                "wlmID": "slurm",
                "jobID": name.removeprefix("bb"),
                "userID": 990,
                "groupID": 990,
                **spec,
            },
        }
        return self.svc.create(WORKFLOW, "v1alpha2", NS, body, SYSTEM)

    def get(self, name: str, version: str = "v1alpha2") -> Obj | None:
        try:
            return self.svc.get(WORKFLOW, version, NS, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def computes(self, name: str) -> Obj | None:
        try:
            return self.svc.get(COMPUTES, "v1alpha7", NS, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def merge(self, name: str, patch: Obj, version: str = "v1alpha2") -> Obj:
        return self.svc.patch(WORKFLOW, version, NS, name, MERGE, patch, SYSTEM)

    def json_patch(self, name: str, ops: list[Obj]) -> Obj:
        return self.svc.patch(WORKFLOW, "v1alpha2", NS, name, JSON_PATCH, ops, SYSTEM)

    def set_state(self, name: str, state: str, *, hurry: bool = False) -> Obj:
        spec: Obj = {"desiredState": state}
        if hurry:
            spec["hurry"] = True
        return self.merge(name, {"spec": spec})

    # ---- waiting ----

    async def eventually(self, predicate: Callable[[], T], what: str, timeout: float = 15.0) -> T:
        return await eventually(predicate, what, timeout)

    async def status_is(
        self, name: str, state: str, status: str, *, ready: bool | None = None, message: str | None = None
    ) -> Obj:
        def check() -> Obj | None:
            obj = self.get(name)
            st = (obj or {}).get("status") or {}
            ok = st.get("state") == state and st.get("status") == status
            if ok and ready is not None:
                ok = st.get("ready") is ready
            if ok and message is not None:
                ok = st.get("message") == message
            return obj if ok else None

        return await self.eventually(
            check, f"{name} to be {state}/{status} (ready={ready}, message={message!r})"
        )

    async def settled(self) -> None:
        """Both controllers have caught up with everything written so far.

        A sentinel workflow created now goes through every reconcile step of both runners; once it is
        ready, events that were queued before it have been handled as well (the workers take keys
        in FIFO order and there is no backlog in these small tests).
        """
        name = f"sentinel{len(self.svc.list(WORKFLOW, 'v1alpha7', NS)[0])}"
        self.create(name, [])
        await self.status_is(name, "Proposal", "Completed", ready=True)


def run(test: Callable[[Cluster], Awaitable[None]], tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        await cluster.start()
        try:
            await asyncio.wait_for(test(cluster), 60)
        finally:
            await cluster.stop()

    asyncio.run(main())


# ---- finalizer, Computes, state adoption ----------------------------------------------------------


def test_finalizer_computes_and_adoption(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        created = c.create("bb12", ["#DW Proposal action=wait"])
        assert "finalizers" not in created["metadata"]
        uid = created["metadata"]["uid"]
        wf = await c.eventually(
            lambda: (o := c.get("bb12")) and o["status"].get("computes") and o, "status.computes"
        )
        assert wf["metadata"]["finalizers"] == [FINALIZER]
        st = wf["status"]
        assert st["computes"] == {"kind": "Computes", "name": "bb12", "namespace": "slurm"}
        assert (st["state"], st["ready"], st["status"], st["message"]) == (
            "Proposal",
            False,
            "DriverWait",
            "",
        )
        assert MICROTIME.match(st["desiredStateChange"])
        assert "readyChange" not in st and "elapsedTimeLastState" not in st
        computes = c.computes("bb12")
        assert computes is not None
        assert computes["metadata"]["labels"] == {
            f"{GROUP}/workflow.name": "bb12",
            f"{GROUP}/workflow.namespace": "slurm",
            f"{GROUP}/workflow.uid": uid,
            f"{GROUP}/owner.kind": "Workflow",
            f"{GROUP}/owner.name": "bb12",
            f"{GROUP}/owner.namespace": "slurm",
            f"{GROUP}/owner.uid": uid,
        }
        assert computes["metadata"]["ownerReferences"] == [
            {
                "apiVersion": f"{GROUP}/v1alpha7",
                "kind": "Workflow",
                "name": "bb12",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert "data" not in computes and "spec" not in computes and "status" not in computes
        # The WLM fills the compute node list (specs/dws.md §2.7).
        c.svc.patch(COMPUTES, "v1alpha7", NS, "bb12", MERGE, {"data": [{"name": "c1"}]}, SYSTEM)
        assert c.computes("bb12")["data"] == [{"name": "c1"}]  # type: ignore[index]

    run(body, tmp_path)


def test_state_change_resets_status_and_force_ready(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create(
            "bb12",
            ["#DW Proposal action=error message=rod_misaligned severity=Major", "#DW Teardown action=wait"],
        )
        first = await c.status_is("bb12", "Proposal", "TransientCondition", ready=False)
        assert first["status"]["message"] == "DW Directive 0: Reported error: rod_misaligned"
        # Teardown (allowed from a failed state) together with forceReady: the controller adopts the
        # state, clears message and ready, stamps desiredStateChange and resets forceReady.
        c.merge("bb12", {"spec": {"desiredState": "Teardown", "forceReady": True}}, version="v1alpha7")
        wf = await c.status_is("bb12", "Teardown", "DriverWait", ready=False)
        await c.settled()
        wf = c.get("bb12", "v1alpha7")
        assert wf is not None
        st = wf["status"]
        assert (st["ready"], st["status"], st["message"]) == (False, "DriverWait", "")
        assert wf["spec"]["forceReady"] is False
        assert st["desiredStateChange"] > first["status"]["desiredStateChange"]
        assert st["computes"] == first["status"]["computes"]  # not rewritten outside Proposal

    run(body, tmp_path)


def test_force_ready(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", ["#DW Proposal action=wait"])
        await c.status_is("bb12", "Proposal", "DriverWait", ready=False)
        c.merge("bb12", {"spec": {"forceReady": True}}, version="v1alpha7")
        wf = await c.status_is("bb12", "Proposal", "Completed", ready=True)
        st = wf["status"]
        assert st["message"] == "Forced Ready"
        assert st["drivers"][0]["status"] == "Pending" and st["drivers"][0]["completed"] is False
        assert MICROTIME.match(st["readyChange"]) and GO_DURATION.match(st["elapsedTimeLastState"])

    run(body, tmp_path)


def test_a_wiped_status_is_adopted_again(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", [])
        first = await c.status_is("bb12", "Proposal", "Completed", ready=True)
        c.json_patch("bb12", [{"op": "replace", "path": "/status", "value": None}])
        wf = await c.eventually(
            lambda: (
                (o := c.get("bb12"))
                and (o.get("status") or {}).get("desiredStateChange", "")
                > first["status"]["desiredStateChange"]
                and o["status"].get("ready")
                and o
            ),
            "the state to be adopted again",
        )
        assert (wf["status"]["state"], wf["status"]["status"]) == ("Proposal", "Completed")
        assert wf["status"]["computes"] == first["status"]["computes"]

    run(body, tmp_path)


# ---- test-driver actions ---------------------------------------------------------------------------


def test_action_complete_makes_the_state_ready(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", ["#DW Proposal action=complete"])
        wf = await c.status_is("bb12", "Proposal", "Completed", ready=True)
        st = wf["status"]
        driver = st["drivers"][0]
        assert (driver["status"], driver["completed"]) == ("Completed", True)
        assert MICROTIME.match(driver["completeTime"])
        assert st["message"] == ""
        assert MICROTIME.match(st["readyChange"]) and st["readyChange"] >= st["desiredStateChange"]
        assert GO_DURATION.match(st["elapsedTimeLastState"]), st["elapsedTimeLastState"]
        started = dt.datetime.fromisoformat(st["desiredStateChange"].replace("Z", "+00:00"))
        done = dt.datetime.fromisoformat(st["readyChange"].replace("Z", "+00:00"))
        assert st["elapsedTimeLastState"] == go_duration(done - started)

    run(body, tmp_path)


def test_the_drivers_last_write_of_a_state_also_makes_it_ready(tmp_path: Path) -> None:
    """A state change is two writes of the Workflow, not upstream's four: the PATCH that asks for
    the state also adopts it (DriverWait), and the test driver completes its entry and rolls the
    state up in one write, with upstream's readiness fields."""

    async def body(c: Cluster) -> None:
        c.create("bb13", ["#DW Proposal action=complete", "#DW Setup action=complete"])
        await c.status_is("bb13", "Proposal", "Completed", ready=True)
        start = c.store.current_revision()
        c.set_state("bb13", "Setup")
        wf = await c.status_is("bb13", "Setup", "Completed", ready=True)
        writes = [
            e.object["status"]
            for e in c.store.events_after(start)
            if e.name == "bb13" and e.resource.endswith("workflows")
        ]
        # the PATCH, adopted as it is written, and the driver's write that finished the state
        assert [(w["state"], w["ready"], w["status"]) for w in writes] == [
            ("Setup", False, "DriverWait"),
            ("Setup", True, "Completed"),
        ]
        assert writes[-1]["drivers"][1]["completed"] is True
        st = wf["status"]
        assert MICROTIME.match(st["readyChange"]) and st["readyChange"] >= st["desiredStateChange"]
        assert GO_DURATION.match(st["elapsedTimeLastState"]), st["elapsedTimeLastState"]

    run(body, tmp_path)


def test_a_driver_write_leaves_unknown_statuses_to_the_controller() -> None:
    """An entry with a status upstream does not know: the driver's write changes no roll-up field."""
    wf: Obj = {
        "metadata": {"name": "bb1", "finalizers": [WORKFLOW_FINALIZER]},
        "spec": {"desiredState": "Setup"},
        "status": {
            "state": "Setup",
            "ready": False,
            "status": "DriverWait",
            "message": "",
            "drivers": [
                {"watchState": "Setup", "completed": True, "status": "Completed"},
                {"watchState": "Setup", "completed": False, "status": "Bogus"},
            ],
        },
    }
    before = copy.deepcopy(wf)
    settle_in_driver_write(wf)
    assert wf == before
    # A state the controller has not adopted yet is not rolled up either.
    unadopted = copy.deepcopy(before)
    unadopted["spec"]["desiredState"] = "DataIn"
    unadopted["status"]["drivers"][1]["status"] = "Completed"
    snapshot = copy.deepcopy(unadopted)
    settle_in_driver_write(unadopted)
    assert unadopted == snapshot


def test_no_directives_every_state_is_ready_at_once(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", [])
        for state in ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"):
            if state != "Proposal":
                c.set_state("bb12", state)
            wf = await c.status_is("bb12", state, "Completed", ready=True)
            assert "drivers" not in wf["status"]
            assert GO_DURATION.match(wf["status"]["elapsedTimeLastState"])

    run(body, tmp_path)


def test_action_wait_holds_until_the_json_patch(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", ["#DW Proposal action=complete", "#DW Setup action=wait"])
        await c.status_is("bb12", "Proposal", "Completed", ready=True)
        c.set_state("bb12", "Setup")
        await c.status_is("bb12", "Setup", "DriverWait", ready=False)
        await c.settled()
        wf = c.get("bb12")
        assert wf is not None
        assert (wf["status"]["status"], wf["status"]["ready"]) == ("DriverWait", False)
        assert wf["status"]["drivers"][1] == {
            "driverID": "tester",
            "taskID": "",
            "dwdIndex": 1,
            "watchState": "Setup",
            "lastHB": 0,
            "completed": False,
            "status": "Pending",
        }
        # The seed's release (dws-test-driver config/samples/run-complex.sh).
        c.json_patch(
            "bb12",
            [
                {"op": "replace", "path": "/status/drivers/1/status", "value": "Completed"},
                {"op": "replace", "path": "/status/drivers/1/completed", "value": True},
            ],
        )
        wf = await c.status_is("bb12", "Setup", "Completed", ready=True)
        assert wf["status"]["message"] == ""

    run(body, tmp_path)


@pytest.mark.parametrize(
    ("severity", "driver_status", "workflow_status"),
    [
        (None, "Running", "DriverWait"),
        ("Minor", "Running", "DriverWait"),
        ("minor", "Running", "DriverWait"),
        ("Major", "TransientCondition", "TransientCondition"),
        ("MAJOR", "TransientCondition", "TransientCondition"),
        ("Fatal", "Error", "Error"),
    ],
)
def test_action_error_severities(
    tmp_path: Path, severity: str | None, driver_status: str, workflow_status: str
) -> None:
    async def body(c: Cluster) -> None:
        directive = "#DW Proposal action=error message=TEST_FATAL_ERROR"
        if severity is not None:
            directive += f" severity={severity}"
        c.create("bb12", [directive])
        wf = await c.status_is(
            "bb12",
            "Proposal",
            workflow_status,
            ready=False,
            message="DW Directive 0: Reported error: TEST_FATAL_ERROR",
        )
        driver = wf["status"]["drivers"][0]
        assert driver["status"] == driver_status
        assert driver["message"] == "Reported error: TEST_FATAL_ERROR"
        assert driver["error"] == "TEST FATAL ERROR"
        assert driver["completed"] is False and "completeTime" not in driver
        assert wf["status"]["message"] == "DW Directive 0: Reported error: TEST_FATAL_ERROR"

    run(body, tmp_path)


def test_action_error_unknown_severity(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create(
            "bb12", ["#DW Setup action=complete", "#DW Proposal action=error message=x_y severity=Cosmic"]
        )
        wf = await c.status_is("bb12", "Proposal", "Error", ready=False)
        driver = wf["status"]["drivers"][1]
        assert driver["status"] == "Error"
        assert driver["message"] == "Internal error: unknown severity: Cosmic"
        assert driver["error"] == "unknown severity: Cosmic"
        assert wf["status"]["message"] == "DW Directive 1: Internal error: unknown severity: Cosmic"

    run(body, tmp_path)


def test_transient_condition_released_by_the_operator(tmp_path: Path) -> None:
    """The README's Major exercise: json-patch the entry to Completed and remove its error."""

    async def body(c: Cluster) -> None:
        c.create("bb12", ["#DW Proposal action=error message=johnson_rod_misalignment severity=Major"])
        await c.status_is("bb12", "Proposal", "TransientCondition", ready=False)
        with pytest.raises(ApiError) as info:
            c.json_patch(
                "bb12",
                [
                    {"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"},
                    {"op": "replace", "path": "/status/drivers/0/completed", "value": True},
                ],
            )
        assert info.value.reason == (
            "Status.Drivers[0]: Internal error: driver cannot be completed when error is present"
        )
        c.json_patch(
            "bb12",
            [
                {"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"},
                {"op": "replace", "path": "/status/drivers/0/completed", "value": True},
                {"op": "remove", "path": "/status/drivers/0/error"},
            ],
        )
        wf = await c.status_is("bb12", "Proposal", "Completed", ready=True)
        # The entry keeps its message, and Completed entries' messages are rolled up too.
        assert wf["status"]["message"] == "DW Directive 0: Reported error: johnson_rod_misalignment"

    run(body, tmp_path)


def test_error_does_not_block_teardown(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create(
            "bb12",
            [
                "#DW Proposal action=complete",
                "#DW DataIn action=error message=sample_data_error severity=Fatal",
                "#DW Teardown action=wait",
            ],
        )
        for state in ("Proposal", "Setup"):
            if state != "Proposal":
                c.set_state("bb12", state)
            await c.status_is("bb12", state, "Completed", ready=True)
        c.set_state("bb12", "DataIn")
        failed = await c.status_is("bb12", "DataIn", "Error", ready=False)
        with pytest.raises(ApiError) as info:
            c.set_state("bb12", "PreRun")
        assert (
            info.value.reason
            == 'Status.State: Invalid value: "DataIn": current desired state not yet achieved'
        )
        c.set_state("bb12", "Teardown", hurry=True)
        wf = await c.status_is("bb12", "Teardown", "DriverWait", ready=False)
        assert wf["status"]["message"] == ""
        assert wf["status"]["drivers"][1] == failed["status"]["drivers"][1]  # the Error entry stays
        c.json_patch(
            "bb12",
            [
                {"op": "replace", "path": "/status/drivers/2/status", "value": "Completed"},
                {"op": "replace", "path": "/status/drivers/2/completed", "value": True},
            ],
        )
        wf = await c.status_is("bb12", "Teardown", "Completed", ready=True)
        assert wf["spec"]["hurry"] is True

    run(body, tmp_path)


# ---- deletion --------------------------------------------------------------------------------------


def test_deletion_waits_for_other_finalizers_then_removes_computes_then_the_workflow(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", [])
        await c.status_is("bb12", "Proposal", "Completed", ready=True)
        assert c.computes("bb12") is not None
        c.merge("bb12", {"metadata": {"finalizers": [FINALIZER, "example.com/driver"]}})
        start = c.store.current_revision()
        obj, gone = c.svc.delete(WORKFLOW, "v1alpha2", NS, "bb12", SYSTEM)
        assert not gone and obj["metadata"]["deletionTimestamp"]
        await c.settled()
        held = c.get("bb12")
        assert held is not None
        assert held["metadata"]["finalizers"] == [FINALIZER, "example.com/driver"]
        assert c.computes("bb12") is not None
        # The other driver lets go: DWS deletes the Computes, then releases the workflow.
        c.json_patch("bb12", [{"op": "remove", "path": "/metadata/finalizers/1"}])
        await c.eventually(lambda: c.get("bb12") is None, "the workflow to be gone")
        assert c.computes("bb12") is None
        deleted = [
            (e.revision, e.resource)
            for e in c.store.events_after(start)
            if e.type == "DELETED" and e.name == "bb12"
        ]
        assert [r for _, r in deleted] == [f"{GROUP}/computes", f"{GROUP}/workflows"]

    run(body, tmp_path)


def test_deletion_in_any_state_without_other_finalizers(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        c.create("bb12", ["#DW Proposal action=wait"])
        await c.status_is("bb12", "Proposal", "DriverWait", ready=False)
        c.svc.delete(WORKFLOW, "v1alpha2", NS, "bb12", SYSTEM)
        await c.eventually(
            lambda: c.get("bb12") is None and c.computes("bb12") is None, "workflow and computes gone"
        )

    run(body, tmp_path)


# ---- the worked example --------------------------------------------------------------------------


def test_worked_example_fatal_one_proposal(tmp_path: Path) -> None:
    """specs/dws.md §1.7, field by field, read back in v1alpha2 as the plugin's tests do."""

    async def body(c: Cluster) -> None:
        directives = [
            "#DW Proposal action=error message=TEST_FATAL_ERROR severity=Fatal",
            "#DW Teardown action=wait",
        ]
        c.create("bb12", directives)
        await c.status_is("bb12", "Proposal", "Error")
        await c.settled()
        wf = c.get("bb12")
        assert wf is not None
        assert wf["apiVersion"] == f"{GROUP}/v1alpha2"
        assert wf["kind"] == "Workflow"
        m = wf["metadata"]
        assert (m["name"], m["namespace"]) == ("bb12", "slurm")
        assert m["labels"] == {"origin": "burst_buffer.lua"}
        assert m["finalizers"] == [FINALIZER]
        assert wf["spec"] == {
            "desiredState": "Proposal",
            "dwDirectives": directives,
            "wlmID": "slurm",
            "jobID": "12",
            "userID": 990,
            "groupID": 990,
            "hurry": False,
        }
        st = wf["status"]
        assert set(st) == {
            "state",
            "ready",
            "status",
            "message",
            "env",
            "computes",
            "desiredStateChange",
            "drivers",
        }
        assert st["state"] == "Proposal"
        assert st["ready"] is False
        assert st["status"] == "Error"
        assert st["message"] == "DW Directive 0: Reported error: TEST_FATAL_ERROR"
        assert st["env"] == {"DW_WORKFLOW_NAME": "bb12", "DW_WORKFLOW_NAMESPACE": "slurm"}
        assert st["computes"] == {"kind": "Computes", "name": "bb12", "namespace": "slurm"}
        assert MICROTIME.match(st["desiredStateChange"])
        assert st["drivers"] == [
            {
                "driverID": "tester",
                "taskID": "",
                "dwdIndex": 0,
                "watchState": "Proposal",
                "lastHB": 0,
                "completed": False,
                "status": "Error",
                "message": "Reported error: TEST_FATAL_ERROR",
                "error": "TEST FATAL ERROR",
            },
            {
                "driverID": "tester",
                "taskID": "",
                "dwdIndex": 1,
                "watchState": "Teardown",
                "lastHB": 0,
                "completed": False,
                "status": "Pending",
            },
        ]
        # What the plugin's get_driver_errors makes of it for slurm_bb_setup (specs/dws.md §1.7, §5.3).
        errors = "".join(
            f"{d['driverID']}: {d['error']}\n" for d in st["drivers"] if d.get("status") == "Error"
        )
        assert "DWS driver error(s):\n" + errors == "DWS driver error(s):\ntester: TEST FATAL ERROR\n"

    run(body, tmp_path)


def _at_rest(state: str = "DataIn") -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "slurm", "finalizers": [WORKFLOW_FINALIZER]},
        "spec": {"desiredState": state},
        "status": {"state": state, "ready": True, "status": "Completed"},
    }


def test_the_workflow_controller_wants_every_workflow_but_one_at_rest() -> None:
    controller = WorkflowReconciler()
    assert not controller.wants(_at_rest())
    changes: list[Callable[[dict[str, Any]], None]] = [
        lambda wf: wf["spec"].update(desiredState="PreRun"),  # a state change to adopt
        lambda wf: wf["status"].update(ready=False),  # drivers still at work
        lambda wf: wf["metadata"].update(finalizers=[]),  # the finalizer to add
        lambda wf: wf["metadata"].update(deletionTimestamp="2026-12-05T00:00:00Z"),  # to finalize
        lambda wf: wf.update(status=None),  # no status yet
        lambda wf: wf.update(_at_rest("Proposal")),  # Proposal: its Computes to check
    ]
    for change in changes:
        wf = _at_rest()
        change(wf)
        assert controller.wants(wf), wf


def test_the_test_driver_wants_only_workflows_working_on_their_desired_state() -> None:
    driver = TestDriverReconciler()
    working = _at_rest()
    working["status"]["ready"] = False
    assert driver.wants(working)
    assert not driver.wants(_at_rest())
    moving = copy.deepcopy(working)
    moving["spec"]["desiredState"] = "PreRun"  # not adopted yet: the controller's move first
    deleting = copy.deepcopy(working)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    assert not driver.wants(moving) and not driver.wants(deleting)
