"""Workflow bodies as the Slurm plugin sends them (v1alpha2, namespace ``slurm``), for tests."""

from __future__ import annotations

from typing import Any

GROUP_VERSION = "dataworkflowservices.github.io/v1alpha2"


def workflow(name: str, directives: list[str]) -> dict[str, Any]:
    """A new Workflow in Proposal for job 4242 of uid/gid 1000, with ``directives``."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": "slurm"},
        "spec": {
            "desiredState": "Proposal",
            "wlmID": "slurm",
            "jobID": 4242,
            "userID": 1000,
            "groupID": 1000,
            "dwDirectives": directives,
        },
    }
