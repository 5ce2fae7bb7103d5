"""How a storage agent reports a failed make: a failure ends the job's setup, a transient condition
(which the agent's next try clears) keeps it waiting."""

from __future__ import annotations

from slurmlink.agent.allocations import failure_status
from slurmlink.storage.filesystems import CommandError, StateError, TransientError


def test_a_transient_condition_is_reported_as_pending_with_its_reason() -> None:
    status = failure_status(TransientError("glusterd does not answer on storage node s2"))
    assert status == {"state": "Pending", "message": "glusterd does not answer on storage node s2; retrying"}


def test_other_failures_are_reported_as_failed() -> None:
    assert failure_status(StateError("brick 1 of v exists"))["state"] == "Failed"
    command = CommandError("s1", ["mkfs.xfs", "/dev/loop9"], 1, "no space")
    assert failure_status(command) == {"state": "Failed", "message": str(command)}
