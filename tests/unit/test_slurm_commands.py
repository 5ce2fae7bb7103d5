"""Reading slurmctld's answers: ``squeue --json`` of Slurm 22.05 and of later versions."""

from __future__ import annotations

import json

import pytest

from slurmlink.slurm.commands import JobStatus, parse_squeue_json


def _squeue(*jobs: dict[str, object]) -> str:
    return json.dumps({"meta": {"plugin": {"type": "openapi/v0.0.38"}}, "errors": [], "jobs": list(jobs)})


def test_slurm_22_05_gives_the_state_as_a_string() -> None:
    text = _squeue(
        {
            "job_id": 8,
            "job_state": "CANCELLED",
            "burst_buffer": "#DW DataIn action=wait",
            "burst_buffer_state": "teardown",
        },
        {"job_id": 9, "job_state": "PENDING", "burst_buffer": "", "burst_buffer_state": ""},
    )
    assert parse_squeue_json(text) == {
        "8": JobStatus("CANCELLED", "teardown"),
        "9": JobStatus("PENDING", ""),
    }


def test_later_versions_give_the_state_as_a_list() -> None:
    text = _squeue({"job_id": 12, "job_state": ["COMPLETED"], "burst_buffer_state": "complete"})
    assert parse_squeue_json(text) == {"12": JobStatus("COMPLETED", "complete")}


@pytest.mark.parametrize(
    ("status", "settled"),
    [
        (JobStatus("CANCELLED", "teardown"), True),
        (JobStatus("COMPLETED", "complete"), True),
        (JobStatus("TIMEOUT", ""), True),
        (JobStatus("CANCELLED", "pending"), True),
        (JobStatus("COMPLETED", "staging-out"), False),  # data_out still to come
        (JobStatus("COMPLETED", "post-run"), False),
        (JobStatus("PENDING", "teardown"), False),  # held after a stage-in error: Slurm may retry
        (JobStatus("RUNNING", "running"), False),
        (JobStatus("COMPLETING", "complete"), False),
    ],
)
def test_only_an_ended_job_with_a_settled_burst_buffer_is_settled(status: JobStatus, settled: bool) -> None:
    assert status.burst_buffer_settled is settled


def test_a_job_without_a_state_is_not_settled() -> None:
    assert parse_squeue_json(_squeue({"job_id": 3})) == {"3": JobStatus("", "")}
    assert not JobStatus("", "").ended
