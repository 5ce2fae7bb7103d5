"""Pruning of unknown fields by a kind's structural schema, as a structural CRD prunes."""

from __future__ import annotations

from typing import Any

import pytest

from slurmlink.resources import errors, pruning
from slurmlink.resources.configmap import ConfigMapObject
from slurmlink.resources.dws.workflow import WorkflowObject


def workflow(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "metadata": {"name": "w", "labels": {"a": "b"}},
        "spec": {"desiredState": "Proposal", "dwDirectives": [], "wlmID": "slurm", "jobID": 1},
        "status": {"ready": False, "env": {"ANY_NAME": "kept"}, "drivers": [{"driverID": "d", "lastHB": 1}]},
        **extra,
    }


def test_declared_fields_are_kept() -> None:
    obj = workflow()
    before = repr(obj)
    assert pruning.prune(obj, WorkflowObject) == []
    assert repr(obj) == before


def test_unknown_fields_at_every_level_are_pruned_and_reported() -> None:
    obj = workflow(extra={"x": 1})
    obj["metadata"]["bogus"] = True
    obj["spec"]["typo"] = "x"
    obj["status"]["drivers"][0]["nested"] = {"deep": 1}
    assert pruning.prune(obj, WorkflowObject) == [
        "metadata.bogus",
        "spec.typo",
        "status.drivers[0].nested",
        "extra",
    ]
    assert "extra" not in obj and "typo" not in obj["spec"] and "bogus" not in obj["metadata"]
    assert obj["status"]["drivers"][0] == {"driverID": "d", "lastHB": 1}


def test_free_form_maps_keep_their_keys() -> None:
    """``status.env`` and ConfigMap ``data`` are maps of arbitrary keys, as in their CRDs."""
    obj = {"metadata": {"name": "c"}, "data": {"any.key": "v"}, "binaryData": {"b": "eA=="}}
    assert pruning.prune(obj, ConfigMapObject) == []


def test_a_kind_without_a_structure_keeps_everything_but_unknown_metadata() -> None:
    obj = {"metadata": {"name": "x", "nope": 1}, "anything": {"goes": True}}
    assert pruning.prune(obj, None) == ["metadata.nope"]
    assert obj == {"metadata": {"name": "x"}, "anything": {"goes": True}}


def test_strict_error_reads_as_the_api_servers() -> None:
    error = pruning.strict_error("Workflow", "v1alpha2", ["spec.a", "b"])
    assert error.code == 400 and error.reason == "BadRequest"
    assert error.message == (
        'Workflow in version "v1alpha2" cannot be handled as a Workflow: strict decoding error: '
        'unknown field "spec.a", unknown field "b"'
    )


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, "Warn"), ("", "Warn"), ("Strict", "Strict"), ("Ignore", "Ignore")]
)
def test_field_validation_values(raw: str | None, expected: str) -> None:
    assert pruning.field_validation(raw) == expected


def test_field_validation_rejects_other_values() -> None:
    with pytest.raises(errors.ApiError) as info:
        pruning.field_validation("strict")
    assert info.value.code == 400
    assert 'supported values: "Ignore", "Warn", "Strict"' in info.value.message


def test_an_update_prunes_what_changed_and_leaves_what_equals_the_stored_object() -> None:
    """Parts equal to the stored object were pruned when it was stored: they are not walked again.

    The stored object here carries unknown fields (as one written before a schema change would):
    where the update leaves a part as it was, they stay; where it changes the part, they go.
    """
    stored = workflow()
    stored["spec"]["old"] = "kept while unchanged"
    stored["status"]["drivers"] = [{"driverID": "a", "legacy": 1}, {"driverID": "b", "legacy": 2}]
    stored["status"]["env"] = {"A": "1"}
    new = workflow()
    new["spec"]["old"] = "kept while unchanged"
    new["spec"]["desiredState"] = "Setup"  # spec changed: walked, so its unknown field goes
    new["status"]["drivers"] = [{"driverID": "a", "legacy": 1}, {"driverID": "b", "legacy": 2, "new": 3}]
    new["status"]["env"] = {"A": "1"}
    unknown = pruning.prune(new, WorkflowObject, stored)
    assert unknown == ["spec.old", "status.drivers[1].legacy", "status.drivers[1].new"]
    assert new["status"]["drivers"] == [{"driverID": "a", "legacy": 1}, {"driverID": "b"}]
    assert "old" not in new["spec"]


def test_an_update_against_a_stored_object_prunes_new_unknown_fields_at_every_level() -> None:
    stored = workflow()
    new = workflow(extra={"x": 1})
    new["spec"]["typo"] = "x"
    new["status"]["drivers"].append({"driverID": "e", "nested": {"deep": 1}})
    assert pruning.prune(new, WorkflowObject, stored) == [
        "spec.typo",
        "status.drivers[1].nested",
        "extra",
    ]
    assert new["status"]["drivers"][1] == {"driverID": "e"}
