"""Label and field selectors: the grammar the Kubernetes API accepts, and 400s for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from slurmlink.resources.errors import ApiError
from slurmlink.resources.selectors import (
    field_selector_name,
    parse_field_selector,
    parse_field_terms,
    parse_label_selector,
)


def obj(name: str = "wf", namespace: str = "slurm", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": dict(labels)}}


OBJECTS = {
    "a": obj("a", app="x", tier="front", n="5"),
    "b": obj("b", app="y", n="10"),
    "c": obj("c", other=""),
    "d": {"metadata": {"name": "d"}},  # no labels at all
    "e": obj("e", **{"example.com/role": "db", "app": "x"}),
}


def matching(selector: str | None) -> list[str]:
    match = parse_label_selector(selector)
    return sorted(name for name, o in OBJECTS.items() if match(o))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, ["a", "b", "c", "d", "e"]),
        ("", ["a", "b", "c", "d", "e"]),
        ("   ", ["a", "b", "c", "d", "e"]),
        ("app=x", ["a", "e"]),
        ("app==x", ["a", "e"]),
        ("app = x", ["a", "e"]),
        ("app!=x", ["b", "c", "d"]),
        ("app", ["a", "b", "e"]),
        ("!app", ["c", "d"]),
        ("! app", ["c", "d"]),
        ("app in (x,y)", ["a", "b", "e"]),
        ("app in ( x , y )", ["a", "b", "e"]),
        ("app in (y)", ["b"]),
        ("app notin (x)", ["b", "c", "d"]),
        ("app notin (x,y)", ["c", "d"]),
        ("app=x,tier=front", ["a"]),
        ("app=x,!tier", ["e"]),
        ("app,tier notin (front)", ["b", "e"]),
        ("example.com/role=db", ["e"]),
        ("example.com/role", ["e"]),
        ("other=", ["c"]),
        ("other", ["c"]),
        ("other in (,z)", ["c"]),
        ("n>6", ["b"]),
        ("n<6", ["a"]),
        ("n>-1", ["a", "b"]),
        ("app=nothing", []),
    ],
)
def test_label_selector_matches(selector: str | None, expected: list[str]) -> None:
    assert matching(selector) == expected


@pytest.mark.parametrize(
    "selector",
    [
        "a in x",  # a set needs parentheses
        "a in ()",  # and must not be empty
        "a notin ()",
        "a in (x",  # unclosed
        "a=b=c",
        "a=b c",
        "a b",
        "=b",
        "!",
        "!=b",
        "a,",
        ",a",
        "a,,b",
        "a=(b)",
        "a>b",  # Gt/Lt need an integer
        "a<",
        "a b=c",
        "-a=b",  # key must start with an alphanumeric
        "a-=b",
        "a=b-",  # value must end with an alphanumeric
        "a=" + "x" * 64,  # value longer than 63
        "x" * 64 + "=a",  # name longer than 63
        "Example.com/a=b",  # prefix must be lowercase DNS
        "/a=b",
        "a/=b",
        "a in (x,-y)",
    ],
)
def test_label_selector_errors_are_bad_requests(selector: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_label_selector(selector)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"
    assert info.value.message.startswith("unable to parse requirement: ")


def test_label_selector_error_texts() -> None:
    with pytest.raises(ApiError, match="values set can't be empty"):
        parse_label_selector("a in ()")
    with pytest.raises(ApiError, match=r"found '=', expected: ',' or 'end of string'"):
        parse_label_selector("a=b=c")
    with pytest.raises(ApiError, match=r"found 'x', expected: '\('"):
        parse_label_selector("a in x")
    with pytest.raises(ApiError, match=r"Invalid value: \"a-\""):
        parse_label_selector("k=a-")


def test_label_selector_on_objects_without_metadata() -> None:
    assert parse_label_selector("!a")({})
    assert not parse_label_selector("a")({"metadata": None})
    assert parse_label_selector("a!=b")({"metadata": {"labels": None}})


# ---- field selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, ["a", "b", "c"]),
        ("", ["a", "b", "c"]),
        ("metadata.name=a", ["a"]),
        ("metadata.name==a", ["a"]),
        ("metadata.name!=a", ["b", "c"]),
        ("metadata.namespace=slurm", ["a", "b"]),
        ("metadata.namespace!=slurm", ["c"]),
        ("metadata.namespace=slurm,metadata.name!=a", ["b"]),
        ("metadata.name=a,metadata.name=b", []),
        (" metadata.name = a ", ["a"]),
        ("metadata.name=", []),
        ("metadata.name=a,", ["a"]),
    ],
)
def test_field_selector_matches(selector: str | None, expected: list[str]) -> None:
    objects = [obj("a"), obj("b"), obj("c", namespace="default")]
    match = parse_field_selector(selector)
    assert sorted(o["metadata"]["name"] for o in objects if match(o)) == expected


def test_field_selector_escapes() -> None:
    odd = {"metadata": {"name": "a,b=c\\d", "namespace": "x"}}
    assert parse_field_selector(r"metadata.name=a\,b\=c\\d")(odd)
    assert parse_field_terms(r"metadata.name=a\,b") == [("metadata.name", "=", "a,b")]
    # ``!=`` is found before ``=``; ``==`` is the same as ``=``.
    assert parse_field_terms("metadata.name!=x,metadata.namespace==y") == [
        ("metadata.name", "!=", "x"),
        ("metadata.namespace", "=", "y"),
    ]


def test_cluster_scoped_objects_have_an_empty_namespace() -> None:
    ns = {"metadata": {"name": "slurm"}}
    assert parse_field_selector("metadata.namespace=")(ns)
    assert not parse_field_selector("metadata.namespace=slurm")(ns)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("spec.wlmID=x", "field label not supported: spec.wlmID"),
        ("status.state!=Setup", "field label not supported: status.state"),
        ("metadata.labels=x", "field label not supported: metadata.labels"),
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        ("metadata.name=a,bogus", "invalid selector: 'metadata.name=a,bogus'; can't understand 'bogus'"),
        ("metadata.name=a=b", "unescaped '=' in value"),
        (r"metadata.name=a\x", "invalid escape sequence"),
        ("metadata.name=a\\", "ends with an escape character"),
    ],
)
def test_field_selector_errors_are_bad_requests(selector: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_field_selector(selector)
    assert info.value.code == 400
    assert info.value.reason == "BadRequest"
    assert message in info.value.message


def test_field_selector_name() -> None:
    assert field_selector_name(None) is None
    assert field_selector_name("metadata.name=bb12") == "bb12"
    assert field_selector_name("metadata.namespace=slurm,metadata.name==bb12") == "bb12"
    assert field_selector_name("metadata.name!=bb12") is None
    assert field_selector_name("metadata.namespace=slurm") is None
