"""The burst-buffer driver reports a state as ``Running`` (with what it waits for) only once it has
waited a while: most waits end first, and each report is a Workflow write and a watch event."""

from __future__ import annotations

import copy
from typing import Any

from slurmlink.controllers.bbdriver import DONE, DRIVER_ID, BurstBufferDriver, _fail, _wait


def _workflow(entry_status: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "slurm", "name": "bb7"},
        "spec": {"desiredState": "PreRun"},
        "status": {
            "state": "PreRun",
            "drivers": [{"driverID": DRIVER_ID, "watchState": "PreRun", "status": entry_status}],
        },
    }


def test_a_new_wait_is_kept_quiet_for_the_quiet_period_then_written() -> None:
    obj = _workflow()
    waiting = _wait("waiting for compute1 to be mounted")
    patient = BurstBufferDriver(quiet_wait=3600)
    left = patient._quiet(obj, copy.deepcopy(obj), "PreRun", waiting)
    assert left is not None and 3500 < left <= 3600
    again = patient._quiet(obj, copy.deepcopy(obj), "PreRun", waiting)
    assert again is not None and again <= left  # the same wait, not a new one
    assert BurstBufferDriver(quiet_wait=0)._quiet(obj, copy.deepcopy(obj), "PreRun", waiting) is None


def test_an_end_a_failure_a_change_or_a_reported_wait_is_written_at_once() -> None:
    driver = BurstBufferDriver(quiet_wait=3600)
    obj = _workflow()
    assert driver._quiet(obj, copy.deepcopy(obj), "PreRun", _wait("mounting")) is not None
    assert driver._quiet(obj, copy.deepcopy(obj), "PreRun", DONE) is None
    assert driver._waiting_since == {}
    assert driver._quiet(obj, copy.deepcopy(obj), "PreRun", _fail("mount failed")) is None
    changed = copy.deepcopy(obj)
    changed["status"]["computes"] = "bb7"
    assert driver._quiet(obj, changed, "PreRun", _wait("mounting")) is None
    reported = _workflow("Running")
    assert driver._quiet(reported, copy.deepcopy(reported), "PreRun", _wait("mounting")) is None
