"""Merge patch (RFC 7386) and JSON patch (RFC 6902) as the API server applies them, with its errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slurmlink.resources.errors import ApiError
from slurmlink.resources.patching import (
    JSON_PATCH,
    MERGE,
    SUPPORTED,
    apply_patch,
    json_equal,
    json_patch,
    media_type,
    merge_patch,
)

UNSUPPORTED_TEXT = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)


# ---- merge patch -------------------------------------------------------------------------------

# RFC 7386 appendix A, verbatim.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, expected: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == expected
    assert target == before


def test_merge_patch_result_does_not_share_patch_values() -> None:
    patch = {"spec": {"list": [1, {"x": 1}]}}
    out = merge_patch({}, patch)
    out["spec"]["list"][1]["x"] = 2
    assert patch == {"spec": {"list": [1, {"x": 1}]}}


def test_apply_merge_patch_does_not_touch_the_document() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "spec": {"nested": {"k": "v"}}}
    before = copy.deepcopy(doc)
    out = apply_patch(doc, MERGE, {"metadata": {"labels": {"b": "2"}}})
    out["spec"]["nested"]["k"] = "changed"
    assert doc == before
    assert out["metadata"]["labels"] == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    ("patch", "go_type"), [([1], "array"), ("x", "string"), (3, "number"), (True, "bool"), (None, "null")]
)
def test_merge_patch_must_be_an_object(patch: Any, go_type: str) -> None:
    with pytest.raises(ApiError) as info:
        apply_patch({}, MERGE, patch)
    assert info.value.code == 400
    assert info.value.message == (
        f"json: cannot unmarshal {go_type} into Go value of type map[string]interface {{}}"
    )


# ---- JSON patch --------------------------------------------------------------------------------

DOC = {
    "metadata": {"name": "bb12", "labels": {"a/b": "1", "m~n": "2"}},
    "spec": {"desiredState": "Proposal", "jobID": 12, "dwDirectives": ["one", "two"]},
    "status": {"drivers": [{"status": "Pending"}, {"status": "Running"}]},
}


def patched(ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    out = apply_patch(doc, JSON_PATCH, ops)
    assert doc == DOC  # never modified in place
    return out


def test_json_patch_operations() -> None:
    out = patched([{"op": "add", "path": "/spec/dwDirectives/-", "value": "three"}])
    assert out["spec"]["dwDirectives"] == ["one", "two", "three"]
    out = patched([{"op": "add", "path": "/spec/dwDirectives/0", "value": "zero"}])
    assert out["spec"]["dwDirectives"] == ["zero", "one", "two"]
    out = patched([{"op": "remove", "path": "/spec/dwDirectives/0"}])
    assert out["spec"]["dwDirectives"] == ["two"]
    out = patched([{"op": "replace", "path": "/status/drivers/0/status", "value": "Completed"}])
    assert out["status"]["drivers"][0] == {"status": "Completed"}
    out = patched([{"op": "move", "from": "/spec/jobID", "path": "/spec/job"}])
    assert "jobID" not in out["spec"]
    assert out["spec"]["job"] == 12
    out = patched([{"op": "copy", "from": "/spec/dwDirectives", "path": "/spec/copy"}])
    assert out["spec"]["copy"] == ["one", "two"]
    out = patched([{"op": "add", "path": "/metadata/finalizers", "value": ["f"]}])
    assert out["metadata"]["finalizers"] == ["f"]
    out = patched([{"op": "remove", "path": "/status"}])
    assert "status" not in out


def test_json_patch_pointer_escapes() -> None:
    out = patched([{"op": "remove", "path": "/metadata/labels/a~1b"}])
    assert out["metadata"]["labels"] == {"m~n": "2"}
    out = patched([{"op": "replace", "path": "/metadata/labels/m~0n", "value": "3"}])
    assert out["metadata"]["labels"] == {"a/b": "1", "m~n": "3"}


def test_json_patch_test_op() -> None:
    assert patched([{"op": "test", "path": "/spec/jobID", "value": 12}]) == DOC
    assert patched([{"op": "test", "path": "/spec/jobID", "value": 12.0}]) == DOC
    assert patched([{"op": "test", "path": "/spec/dwDirectives", "value": ["one", "two"]}]) == DOC
    for value in ("12", True, None, ["two", "one"]):
        with pytest.raises(ApiError) as info:
            patched([{"op": "test", "path": "/spec/jobID", "value": value}])
        assert info.value.code == 422
        assert info.value.reason == "Invalid"
        assert info.value.details is not None
        assert info.value.details["causes"][0]["message"] == "testing value /spec/jobID failed: test failed"
    with pytest.raises(ApiError) as info:
        patched([{"op": "test", "path": "/nothere", "value": 1}])
    assert info.value.code == 422


def test_json_patch_is_all_or_nothing() -> None:
    doc = copy.deepcopy(DOC)
    with pytest.raises(ApiError):
        apply_patch(
            doc,
            JSON_PATCH,
            [
                {"op": "remove", "path": "/status"},
                {"op": "test", "path": "/spec/desiredState", "value": "Setup"},
            ],
        )
    assert doc == DOC


@pytest.mark.parametrize(
    ("op", "cause"),
    [
        (
            {"op": "remove", "path": "/status/nothere"},
            'remove operation does not apply: doc is missing path: "/status/nothere": missing value',
        ),
        (
            {"op": "replace", "path": "/spec/nothere", "value": 1},
            'replace operation does not apply: doc is missing path: "/spec/nothere": missing value',
        ),
        (
            {"op": "add", "path": "/nothere/x", "value": 1},
            'add operation does not apply: doc is missing path: "/nothere/x": missing value',
        ),
        (
            {"op": "add", "path": "/spec/dwDirectives/9", "value": "x"},
            'add operation does not apply: doc is missing path: "/spec/dwDirectives/9": missing value',
        ),
        (
            {"op": "remove", "path": "/spec/dwDirectives/5"},
            'remove operation does not apply: doc is missing path: "/spec/dwDirectives/5": missing value',
        ),
        (
            {"op": "move", "from": "/spec/nothere", "path": "/spec/x"},
            'move operation does not apply: doc is missing path: "/spec/nothere": missing value',
        ),
        ({"op": "bogus", "path": "/spec"}, "Unexpected kind: bogus"),
        ({"path": "/spec"}, "Unexpected kind: unknown"),
        ({"op": "add", "value": 1}, "add operation does not apply: path is missing"),
        ({"op": "add", "path": "/spec/x"}, 'add operation does not apply: missing value for path "/spec/x"'),
        (
            {"op": "copy", "path": "/spec/x"},
            'copy operation does not apply: missing "from" for path "/spec/x"',
        ),
        (
            {"op": "add", "path": "spec", "value": 1},
            'add operation does not apply: invalid path "spec": must start with /',
        ),
        ("not an op", "invalid JSON patch operation 0: must be an object, not string"),
    ],
)
def test_json_patch_failures_are_invalid_with_a_cause(op: Any, cause: str) -> None:
    with pytest.raises(ApiError) as info:
        patched([op])
    err = info.value
    assert err.code == 422
    assert err.reason == "Invalid"
    assert err.message == "the server rejected our request due to an error in our request"
    assert err.details == {"causes": [{"reason": "FieldValueInvalid", "message": cause, "field": ""}]}


@pytest.mark.parametrize(
    ("patch", "go_type"), [({"op": "add"}, "object"), ("x", "string"), (1, "number"), (None, "null")]
)
def test_json_patch_must_be_an_array(patch: Any, go_type: str) -> None:
    with pytest.raises(ApiError) as info:
        apply_patch({}, JSON_PATCH, patch)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"
    assert info.value.message == f"json: cannot unmarshal {go_type} into Go value of type jsonpatch.Patch"


def test_json_patch_must_leave_an_object() -> None:
    with pytest.raises(ApiError) as info:
        apply_patch({"a": 1}, JSON_PATCH, [{"op": "replace", "path": "", "value": [1]}])
    assert info.value.code == 422
    assert json_patch({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]


def test_empty_json_patch_is_a_no_op() -> None:
    assert patched([]) == DOC


# ---- media types -------------------------------------------------------------------------------


def test_media_type() -> None:
    assert media_type("application/merge-patch+json; charset=utf-8") == MERGE
    assert media_type(" Application/JSON-Patch+JSON ") == JSON_PATCH
    assert {MERGE, JSON_PATCH} == SUPPORTED


@pytest.mark.parametrize(
    "content_type",
    [
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
        "application/json",
        "",
    ],
)
def test_other_media_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        apply_patch({}, content_type, {})
    assert info.value.code == 415
    assert info.value.reason == "UnsupportedMediaType"
    assert info.value.message == UNSUPPORTED_TEXT


def test_json_equal() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(1, True)
    assert not json_equal(0, False)
    assert not json_equal("1", 1)
    assert not json_equal(None, 0)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal([1, 2], [2, 1])
