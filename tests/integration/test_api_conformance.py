"""Wire-level conformance of the Kubernetes REST dialect, against a real ``slurmlink serve``.

Everything here is what kubectl and client-go rely on (see shared/specs/kube-api-compat.md): discovery
bodies, ``/openapi/v2``, namespaces, CRUD with resourceVersion rules, merge and JSON patch, the status
subresource, finalizers, selectors, watch semantics (synthetic ADDED, list rv as the start point,
bookmarks, timeouts, 410 after compaction), Tables, and the Status error bodies.

The server runs with ``--no-controllers`` so that nothing but the test writes objects: resource
versions, generations and watch streams are then fully deterministic.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.store.sql import SqlStore
from support.kubectl import run_kubectl, session_home
from support.server import ServerProcess

G = "dataworkflowservices.github.io"
V = "v1alpha2"
GV = f"/apis/{G}/{V}"
NS = "slurm"
WF = f"{GV}/namespaces/{NS}/workflows"
ALL_WF = f"{GV}/workflows"
TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
BOOKMARK_ENV = "SLURMLINK_WATCH_BOOKMARK_INTERVAL"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

pytestmark = pytest.mark.timeout(120)


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One API-only server for the module, with a short bookmark interval so bookmark tests are fast."""
    proc = ServerProcess(tmp_path_factory.mktemp("conformance") / "state", extra_args=("--no-controllers",))
    saved = os.environ.get(BOOKMARK_ENV)
    os.environ[BOOKMARK_ENV] = "0.3"
    try:
        proc.start()
    finally:
        if saved is None:
            os.environ.pop(BOOKMARK_ENV, None)
        else:
            os.environ[BOOKMARK_ENV] = saved
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def workflow(name: str, labels: dict[str, str] | None = None, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Workflow",
        "metadata": meta,
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": 12,
            "userID": 1001,
            "groupID": 1001,
        },
    }


def create(
    api: httpx.Client, name: str, labels: dict[str, str] | None = None, ns: str = NS
) -> dict[str, Any]:
    r = api.post(f"{GV}/namespaces/{ns}/workflows", json=workflow(name, labels))
    assert r.status_code == 201, r.text
    return r.json()


def rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def status_body(r: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert r.status_code == code, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    return body


def current_rv(api: httpx.Client) -> str:
    r = api.get(WF, params={"limit": "1"})
    assert r.status_code == 200, r.text
    return str(r.json()["metadata"]["resourceVersion"])


class Watch:
    """A watch stream read frame by frame; every read is bounded by ``read_timeout`` seconds."""

    def __init__(
        self,
        client: httpx.Client,
        path: str,
        params: dict[str, str] | None = None,
        *,
        accept: str = "application/json",
        read_timeout: float = 10.0,
    ) -> None:
        self._cm = client.stream(
            "GET",
            path,
            params={**(params or {}), "watch": "true"},
            headers={"Accept": accept},
            timeout=httpx.Timeout(10.0, read=read_timeout),
        )
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()

    def next(self) -> dict[str, Any]:
        """The next event; StopIteration when the server closed the stream."""
        while True:
            line = next(self._lines)
            if line.strip():
                return json.loads(line)

    def rest(self) -> list[dict[str, Any]]:
        """Every remaining event until the server closes the stream."""
        return [json.loads(line) for line in self._lines if line.strip()]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(i["metadata"]["name"] for i in items)


# ---- discovery, version, openapi ---------------------------------------------------------------


def test_api_versions(api: httpx.Client) -> None:
    r = api.get("/api")
    assert r.status_code == 200
    body = r.json()
    assert body["kind"] == "APIVersions"
    assert body["versions"] == ["v1"]
    assert body["serverAddressByClientCIDRs"][0]["clientCIDR"] == "0.0.0.0/0"


def test_core_v1_resource_list(api: httpx.Client) -> None:
    body = api.get("/api/v1").json()
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == "v1"
    ns = next(r for r in body["resources"] if r["name"] == "namespaces")
    assert ns["namespaced"] is False
    assert ns["kind"] == "Namespace"
    assert {"get", "list"} <= set(ns["verbs"])
    assert ns["shortNames"] == ["ns"]


def test_group_list_prefers_v1alpha7(api: httpx.Client) -> None:
    body = api.get("/apis").json()
    assert body["kind"] == "APIGroupList"
    assert body["apiVersion"] == "v1"
    group = next(g for g in body["groups"] if g["name"] == G)
    versions = [v["version"] for v in group["versions"]]
    assert {"v1alpha2", "v1alpha7"} <= set(versions)
    assert versions[0] == "v1alpha7"
    for v in group["versions"]:
        assert v["groupVersion"] == f"{G}/{v['version']}"
    assert group["preferredVersion"] == {"groupVersion": f"{G}/v1alpha7", "version": "v1alpha7"}


def test_group_document(api: httpx.Client) -> None:
    body = api.get(f"/apis/{G}").json()
    assert body["kind"] == "APIGroup"
    assert body["name"] == G
    assert body["preferredVersion"]["version"] == "v1alpha7"
    status_body(api.get("/apis/nope.example.com"), 404, "NotFound")


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha7"])
def test_group_version_resources(api: httpx.Client, version: str) -> None:
    r = api.get(f"/apis/{G}/{version}")
    assert r.status_code == 200
    body = r.json()
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == f"{G}/{version}"
    by_name = {res["name"]: res for res in body["resources"]}
    wf = by_name["workflows"]
    assert wf["kind"] == "Workflow"
    assert wf["namespaced"] is True
    assert wf["singularName"] == "workflow"
    assert set(wf["verbs"]) == {
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    }
    assert by_name["workflows/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["dwdirectiverules"]["kind"] == "DWDirectiveRule"
    status_body(api.get(f"/apis/{G}/v9"), 404, "NotFound")


def test_version(api: httpx.Client) -> None:
    body = api.get("/version").json()
    assert body["major"] == "1"
    assert body["gitVersion"].startswith("v1.")
    assert body["platform"]


def test_openapi_v2_is_an_empty_octet_stream(api: httpx.Client) -> None:
    r = api.get(
        "/openapi/v2",
        params={"timeout": "32s"},
        headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert "protobuf" not in r.headers["content-type"]
    assert r.content == b""


def test_openapi_v3_lists_only_component_documents(api: httpx.Client) -> None:
    """The Kubernetes-dialect groups have no v3 document (kubectl then uses /openapi/v2's empty one and
    server-side field validation); component routers have theirs."""
    paths = api.get("/openapi/v3").json()["paths"]
    assert not any(path.startswith(("api/", "apis/")) for path in paths)
    status_body(api.get(f"/openapi/v3/apis/{G}/{V}"), 404, "NotFound")


# ---- namespaces --------------------------------------------------------------------------------


def test_namespaces_get_list_create(api: httpx.Client) -> None:
    r = api.get(f"/api/v1/namespaces/{NS}")
    assert r.status_code == 200
    ns = r.json()
    assert ns["kind"] == "Namespace"
    assert ns["apiVersion"] == "v1"
    assert ns["metadata"]["name"] == NS
    assert ns["status"]["phase"] == "Active"

    listed = api.get("/api/v1/namespaces").json()
    assert listed["kind"] == "NamespaceList"
    assert {"default", "dws-system", "slurm"} <= set(names(listed["items"]))

    r = api.post(
        "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "conf"}}
    )
    assert r.status_code == 201, r.text
    assert api.get("/api/v1/namespaces/conf").json()["metadata"]["uid"] == r.json()["metadata"]["uid"]
    status_body(
        api.post(
            "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "conf"}}
        ),
        409,
        "AlreadyExists",
    )


def test_namespace_not_found(api: httpx.Client) -> None:
    body = status_body(api.get("/api/v1/namespaces/nons"), 404, "NotFound")
    assert body["message"] == 'namespaces "nons" not found'
    body = status_body(api.post(f"{GV}/namespaces/nons/workflows", json=workflow("x")), 404, "NotFound")
    assert body["message"] == 'namespaces "nons" not found'


# ---- create, get, errors -----------------------------------------------------------------------


def test_create_fills_server_metadata(api: httpx.Client) -> None:
    r = api.post(WF, params={"fieldManager": "kubectl-client-side-apply"}, json=workflow("c1", {"a": "b"}))
    assert r.status_code == 201, r.text
    obj = r.json()
    m = obj["metadata"]
    assert obj["apiVersion"] == f"{G}/{V}"
    assert obj["kind"] == "Workflow"
    assert m["name"] == "c1"
    assert m["namespace"] == NS
    assert re.fullmatch(r"[0-9a-f-]{36}", m["uid"])
    assert RFC3339.match(m["creationTimestamp"])
    assert m["generation"] == 1
    assert isinstance(m["resourceVersion"], str) and m["resourceVersion"].isdigit()
    assert m["labels"] == {"a": "b"}
    got = api.get(f"{WF}/c1").json()
    assert got == obj
    # The same object in the storage version.
    stored = api.get(f"/apis/{G}/v1alpha7/namespaces/{NS}/workflows/c1").json()
    assert stored["apiVersion"] == f"{G}/v1alpha7"
    assert stored["metadata"]["uid"] == m["uid"]


def test_create_keeps_last_applied_annotation_verbatim(api: httpx.Client) -> None:
    body = workflow("c-annot")
    text = json.dumps({"apiVersion": f"{G}/{V}", "kind": "Workflow", "metadata": {"annotations": {}}}) + "\n"
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": text}
    r = api.post(WF, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == text


def test_create_kind_or_api_version_mismatch_is_bad_request(api: httpx.Client) -> None:
    body = workflow("bad-kind")
    body["kind"] = "Storage"
    assert "kind" in status_body(api.post(WF, json=body), 400, "BadRequest")["message"]
    body = workflow("bad-version")
    body["apiVersion"] = f"{G}/v1alpha7"
    assert "API version" in status_body(api.post(WF, json=body), 400, "BadRequest")["message"]
    status_body(
        api.post(WF, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "BadRequest"
    )


def test_create_namespace_mismatch_is_bad_request(api: httpx.Client) -> None:
    body = status_body(api.post(WF, json=workflow("other-ns", namespace="default")), 400, "BadRequest")
    assert body["message"] == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )


def test_create_existing_is_already_exists(api: httpx.Client) -> None:
    create(api, "dup")
    body = status_body(api.post(WF, json=workflow("dup")), 409, "AlreadyExists")
    assert body["message"] == f'workflows.{G} "dup" already exists'
    assert body["details"] == {"name": "dup", "group": G, "kind": "workflows"}


def test_get_missing_is_not_found(api: httpx.Client) -> None:
    body = status_body(api.get(f"{WF}/nope"), 404, "NotFound")
    assert body["message"] == f'workflows.{G} "nope" not found'
    assert body["details"]["name"] == "nope"
    status_body(api.delete(f"{WF}/nope"), 404, "NotFound")
    status_body(api.patch(f"{WF}/nope", json={}, headers=MERGE), 404, "NotFound")
    status_body(api.get(f"{GV}/namespaces/{NS}/nothings"), 404, "NotFound")


def test_invalid_has_details_and_causes(api: httpx.Client) -> None:
    body = workflow("bogus")
    body["spec"]["desiredState"] = "Bogus"
    status = status_body(api.post(WF, json=body), 422, "Invalid")
    details = status["details"]
    assert details["name"] == "bogus"
    assert details["group"] == G
    assert details["kind"] == "Workflow"
    assert details["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "field": "spec.desiredState",
            "message": 'Unsupported value: "Bogus": supported values: "Proposal", "Setup", "DataIn", '
            '"PreRun", "PostRun", "DataOut", "Teardown"',
        }
    ]
    nameless = workflow("")
    del nameless["metadata"]["name"]
    status = status_body(api.post(WF, json=nameless), 422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "metadata.name"


# ---- patch -------------------------------------------------------------------------------------


def test_merge_patch(api: httpx.Client) -> None:
    create(api, "mp", {"keep": "1", "drop": "2"})
    r = api.patch(
        f"{WF}/mp",
        params={"fieldManager": "kubectl-patch"},
        json={
            "metadata": {"labels": {"drop": None, "new": "3"}},
            "status": {"ready": True, "status": "Completed"},
        },
        headers=MERGE,
    )
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["metadata"]["labels"] == {"keep": "1", "new": "3"}
    assert obj["status"]["ready"] is True
    assert obj["status"]["status"] == "Completed"
    assert api.get(f"{WF}/mp").json() == obj
    # A merge patch body must be an object.
    status_body(api.patch(f"{WF}/mp", json=[1], headers=MERGE), 400, "BadRequest")


def test_json_patch_add_append_remove_and_test(api: httpx.Client) -> None:
    create(api, "jp")
    ops = [
        {"op": "add", "path": "/metadata/finalizers", "value": ["a"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
        {"op": "add", "path": "/metadata/labels", "value": {"x/y": "1"}},
    ]
    r = api.patch(f"{WF}/jp", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["finalizers"] == ["a", "b"]
    assert r.json()["metadata"]["labels"] == {"x/y": "1"}
    r = api.patch(
        f"{WF}/jp",
        json=[
            {"op": "test", "path": "/spec/wlmID", "value": "slurm"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "remove", "path": "/metadata/labels/x~1y"},
        ],
        headers=JSON_PATCH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["finalizers"] == ["b"]
    assert r.json()["metadata"].get("labels", {}) == {}
    before = api.get(f"{WF}/jp").json()

    failed = status_body(
        api.patch(
            f"{WF}/jp",
            json=[
                {"op": "remove", "path": "/metadata/finalizers"},
                {"op": "test", "path": "/spec/wlmID", "value": "nope"},
            ],
            headers=JSON_PATCH,
        ),
        422,
        "Invalid",
    )
    assert failed["details"]["causes"][0]["message"]
    # A failed patch changes nothing, not even its earlier operations.
    assert api.get(f"{WF}/jp").json() == before

    missing = status_body(
        api.patch(f"{WF}/jp", json=[{"op": "remove", "path": "/status/nothere"}], headers=JSON_PATCH),
        422,
        "Invalid",
    )
    assert "missing path" in missing["details"]["causes"][0]["message"]
    not_array = status_body(api.patch(f"{WF}/jp", json={"op": "add"}, headers=JSON_PATCH), 400, "BadRequest")
    assert not_array["message"] == "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
    r = api.patch(f"{WF}/jp", json=[{"op": "remove", "path": "/metadata/finalizers"}], headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert "finalizers" not in r.json()["metadata"]


def test_strategic_merge_and_apply_patch_are_unsupported(api: httpx.Client) -> None:
    create(api, "smp")
    text = (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )
    for content_type, content in (
        ("application/strategic-merge-patch+json", b'{"spec":{"wlmID":"x"}}'),
        ("application/apply-patch+yaml", b"spec:\n  wlmID: x\n"),
        ("text/plain", b"hello"),
    ):
        r = api.patch(f"{WF}/smp", content=content, headers={"Content-Type": content_type})
        assert status_body(r, 415, "UnsupportedMediaType")["message"] == text
    # The media type is checked before the object is looked up (as the real API server does).
    r = api.patch(
        f"{WF}/nope", content=b"{}", headers={"Content-Type": "application/strategic-merge-patch+json"}
    )
    status_body(r, 415, "UnsupportedMediaType")


def test_noop_patch_keeps_resource_version_and_sends_no_event(api: httpx.Client) -> None:
    obj = create(api, "noop")
    with Watch(api, WF, {"resourceVersion": rv(obj), "fieldSelector": "metadata.name=noop"}) as w:
        for patch, headers in (
            ({"spec": {"wlmID": "slurm"}}, MERGE),
            ({"metadata": {"labels": None}}, MERGE),
            ({}, MERGE),
            ([{"op": "replace", "path": "/spec/jobID", "value": 12}], JSON_PATCH),
        ):
            r = api.patch(f"{WF}/noop", json=patch, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json() == obj
        changed = api.patch(f"{WF}/noop", json={"metadata": {"labels": {"n": "1"}}}, headers=MERGE).json()
        assert int(rv(changed)) > int(rv(obj))
        event = w.next()
        # The first event is the real change: none of the no-op patches produced one.
        assert event["type"] == "MODIFIED"
        assert rv(event["object"]) == rv(changed)


def test_generation_bumps_only_on_spec_change(api: httpx.Client) -> None:
    obj = create(api, "gen")
    assert obj["metadata"]["generation"] == 1
    labelled = api.patch(f"{WF}/gen", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE).json()
    assert labelled["metadata"]["generation"] == 1
    status = api.patch(f"{WF}/gen", json={"status": {"ready": True}}, headers=MERGE).json()
    assert status["metadata"]["generation"] == 1
    assert int(rv(status)) > int(rv(labelled)) > int(rv(obj))
    spec = api.patch(f"{WF}/gen", json={"spec": {"desiredState": "Teardown"}}, headers=MERGE).json()
    assert spec["metadata"]["generation"] == 2
    # System fields can't be changed by a patch.
    m = api.patch(
        f"{WF}/gen",
        json={"metadata": {"generation": 99, "uid": "x", "creationTimestamp": "2000-01-01T00:00:00Z"}},
        headers=MERGE,
    ).json()["metadata"]
    assert (m["generation"], m["uid"], m["creationTimestamp"]) == (
        2,
        obj["metadata"]["uid"],
        obj["metadata"]["creationTimestamp"],
    )


def test_patch_with_stale_resource_version_conflicts(api: httpx.Client) -> None:
    obj = create(api, "patch-rv")
    api.patch(f"{WF}/patch-rv", json={"metadata": {"labels": {"a": "1"}}}, headers=MERGE)
    r = api.patch(
        f"{WF}/patch-rv",
        json={"metadata": {"resourceVersion": rv(obj), "labels": {"a": "2"}}},
        headers=MERGE,
    )
    status_body(r, 409, "Conflict")


# ---- update (PUT) ------------------------------------------------------------------------------


def test_put_replaces_and_checks_resource_version(api: httpx.Client) -> None:
    obj = create(api, "put")
    new = json.loads(json.dumps(obj))
    new["metadata"]["labels"] = {"put": "yes"}
    r = api.put(f"{WF}/put", json=new)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["metadata"]["labels"] == {"put": "yes"}
    assert int(rv(updated)) > int(rv(obj))

    stale = json.loads(json.dumps(obj))
    stale["metadata"]["labels"] = {"put": "stale"}
    body = status_body(api.put(f"{WF}/put", json=stale), 409, "Conflict")
    assert body["message"] == (
        f'Operation cannot be fulfilled on workflows.{G} "put": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )

    no_rv = json.loads(json.dumps(updated))
    del no_rv["metadata"]["resourceVersion"]
    body = status_body(api.put(f"{WF}/put", json=no_rv), 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    assert "must be specified for an update" in body["message"]

    renamed = json.loads(json.dumps(updated))
    renamed["metadata"]["name"] = "other"
    status_body(api.put(f"{WF}/put", json=renamed), 400, "BadRequest")
    # Unchanged PUT: no-op, same resourceVersion.
    same = api.put(f"{WF}/put", json=updated)
    assert same.status_code == 200
    assert same.json() == updated


# ---- status subresource ------------------------------------------------------------------------


def test_status_subresource_changes_only_status(api: httpx.Client) -> None:
    obj = create(api, "st", {"l": "1"})
    r = api.patch(
        f"{WF}/st/status",
        json={"spec": {"wlmID": "changed"}, "metadata": {"labels": {"l": "2"}}, "status": {"ready": True}},
        headers=MERGE,
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["status"]["ready"] is True
    assert patched["spec"] == obj["spec"]
    assert patched["metadata"]["labels"] == {"l": "1"}
    assert patched["metadata"]["generation"] == 1

    put = json.loads(json.dumps(patched))
    put["spec"]["wlmID"] = "changed-too"
    put["status"]["message"] = "via put"
    r = api.put(f"{WF}/st/status", json=put)
    assert r.status_code == 200, r.text
    assert r.json()["status"]["message"] == "via put"
    assert r.json()["spec"]["wlmID"] == "slurm"
    assert api.get(f"{WF}/st/status").json() == r.json()
    # The main resource still accepts status (DWS's Workflow has no real status subresource).
    main = api.patch(f"{WF}/st", json={"status": {"message": "main"}}, headers=MERGE).json()
    assert main["status"]["message"] == "main"
    status_body(api.get(f"{WF}/st/scale"), 404, "NotFound")


# ---- finalizers and delete ---------------------------------------------------------------------


def test_finalizers_delay_deletion(api: httpx.Client) -> None:
    body = workflow("fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    r = api.post(WF, json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    with Watch(api, WF, {"resourceVersion": rv(created), "fieldSelector": "metadata.name=fin"}) as w:
        r = api.request(
            "DELETE",
            f"{WF}/fin",
            headers={"Content-Type": "application/json"},
            content=b'{"propagationPolicy":"Background"}',
        )
        assert r.status_code == 200, r.text
        marked = r.json()
        ts = marked["metadata"]["deletionTimestamp"]
        assert RFC3339.match(ts)
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 0
        assert int(rv(marked)) > int(rv(created))
        event = w.next()
        assert event["type"] == "MODIFIED"
        assert event["object"]["metadata"]["deletionTimestamp"] == ts

        # Still readable and listed, and a second DELETE keeps the timestamp.
        assert api.get(f"{WF}/fin").json()["metadata"]["deletionTimestamp"] == ts
        listed = api.get(WF, params={"fieldSelector": "metadata.name=fin"}).json()["items"]
        assert names(listed) == ["fin"]
        again = api.delete(f"{WF}/fin")
        assert again.status_code == 200
        assert again.json()["metadata"]["deletionTimestamp"] == ts
        assert rv(again.json()) == rv(marked)

        # Removing the last finalizer deletes the object.
        r = api.patch(
            f"{WF}/fin", json=[{"op": "remove", "path": "/metadata/finalizers"}], headers=JSON_PATCH
        )
        assert r.status_code == 200, r.text
        event = w.next()
        assert event["type"] == "DELETED"
        assert event["object"]["metadata"]["name"] == "fin"
        assert int(rv(event["object"])) > int(rv(marked))
    status_body(api.get(f"{WF}/fin"), 404, "NotFound")


def test_delete_without_finalizers(api: httpx.Client) -> None:
    obj = create(api, "del")
    with Watch(api, WF, {"resourceVersion": rv(obj), "fieldSelector": "metadata.name=del"}) as w:
        r = api.request("DELETE", f"{WF}/del", json={"propagationPolicy": "Background"})
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["name"] == "del"
        assert w.next()["type"] == "DELETED"
    status_body(api.get(f"{WF}/del"), 404, "NotFound")
    assert api.get(WF, params={"fieldSelector": "metadata.name=del"}).json()["items"] == []
    # Preconditions.
    obj = create(api, "del-pre")
    r = api.request("DELETE", f"{WF}/del-pre", json={"preconditions": {"uid": "not-the-uid"}})
    status_body(r, 409, "Conflict")
    r = api.request("DELETE", f"{WF}/del-pre", json={"preconditions": {"uid": obj["metadata"]["uid"]}})
    assert r.status_code == 200


def test_delete_collection(api: httpx.Client) -> None:
    for i in range(3):
        create(api, f"dc-{i}", {"batch": "dc"})
    create(api, "dc-keep", {"batch": "other"})
    r = api.delete(WF, params={"labelSelector": "batch=dc"})
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "WorkflowList"
    assert names(r.json()["items"]) == ["dc-0", "dc-1", "dc-2"]
    assert api.get(WF, params={"labelSelector": "batch=dc"}).json()["items"] == []
    assert names(api.get(WF, params={"labelSelector": "batch"}).json()["items"]) == ["dc-keep"]


# ---- list and selectors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(api: httpx.Client) -> None:
    create(api, "sel-a", {"sel": "1", "app": "x", "tier": "front"})
    create(api, "sel-b", {"sel": "1", "app": "y"})
    create(api, "sel-c", {"sel": "1"})
    create(api, "sel-d", {"sel": "1", "app": "x"}, ns="default")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("sel=1,app=x", ["sel-a"]),
        ("sel==1,app==x", ["sel-a"]),
        ("sel=1,app!=x", ["sel-b", "sel-c"]),
        ("sel=1,app", ["sel-a", "sel-b"]),
        ("sel=1,!app", ["sel-c"]),
        ("sel=1,app in (x,y)", ["sel-a", "sel-b"]),
        ("sel=1,app in (y)", ["sel-b"]),
        ("sel=1,app notin (x)", ["sel-b", "sel-c"]),
        ("sel=1,app=x,tier", ["sel-a"]),
        ("sel=1,app=z", []),
    ],
)
def test_list_label_selector(api: httpx.Client, labelled: None, selector: str, expected: list[str]) -> None:
    r = api.get(WF, params={"labelSelector": selector, "limit": "500"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "WorkflowList"
    assert body["apiVersion"] == f"{G}/{V}"
    assert body["metadata"]["resourceVersion"].isdigit()
    assert names(body["items"]) == expected


def test_list_all_namespaces_and_field_selectors(api: httpx.Client, labelled: None) -> None:
    everywhere = api.get(ALL_WF, params={"labelSelector": "sel=1"}).json()
    assert names(everywhere["items"]) == ["sel-a", "sel-b", "sel-c", "sel-d"]
    assert {i["metadata"]["namespace"] for i in everywhere["items"]} == {"slurm", "default"}
    by_ns = api.get(ALL_WF, params={"labelSelector": "sel=1", "fieldSelector": "metadata.namespace=default"})
    assert names(by_ns.json()["items"]) == ["sel-d"]
    by_name = api.get(WF, params={"fieldSelector": "metadata.name=sel-b"})
    assert names(by_name.json()["items"]) == ["sel-b"]
    both = api.get(ALL_WF, params={"fieldSelector": "metadata.name=sel-a,metadata.namespace!=default"})
    assert names(both.json()["items"]) == ["sel-a"]
    not_name = api.get(WF, params={"labelSelector": "sel=1", "fieldSelector": "metadata.name!=sel-a"})
    assert names(not_name.json()["items"]) == ["sel-b", "sel-c"]
    # An empty namespace and an unknown one both list nothing.
    assert api.get(f"{GV}/namespaces/dws-system/workflows").json()["items"] == []
    assert api.get(f"{GV}/namespaces/nons/workflows").json()["items"] == []


def test_bad_selectors_are_bad_requests(api: httpx.Client) -> None:
    body = status_body(api.get(WF, params={"fieldSelector": "spec.bogus=slurm"}), 400, "BadRequest")
    assert body["message"] == "field label not supported: spec.bogus"
    status_body(api.get(WF, params={"fieldSelector": "metadata.name"}), 400, "BadRequest")
    status_body(api.get(WF, params={"labelSelector": "a in x"}), 400, "BadRequest")
    status_body(api.get(WF, params={"labelSelector": "a=b=c"}), 400, "BadRequest")
    status_body(
        api.get(WF, params={"watch": "true", "fieldSelector": "spec.x=1"}),
        400,
        "BadRequest",
    )


# ---- watch -------------------------------------------------------------------------------------


def test_watch_from_list_resource_version_replays_only_later_changes(api: httpx.Client) -> None:
    create(api, "w-before", {"w": "replay"})
    list_rv = api.get(WF, params={"labelSelector": "w=replay"}).json()["metadata"]["resourceVersion"]
    added = create(api, "w-after", {"w": "replay"})
    modified = api.patch(f"{WF}/w-before", json={"status": {"ready": True}}, headers=MERGE).json()
    deleted = api.delete(f"{WF}/w-after").json()
    with Watch(api, WF, {"resourceVersion": list_rv, "labelSelector": "w=replay"}) as w:
        events = [w.next() for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "w-after"),
            ("MODIFIED", "w-before"),
            ("DELETED", "w-after"),
        ]
        assert [rv(e["object"]) for e in events] == [rv(added), rv(modified), rv(deleted)]
        assert events[0]["object"]["apiVersion"] == f"{G}/{V}"
        # Then live events.
        live = api.patch(f"{WF}/w-before", json={"status": {"ready": False}}, headers=MERGE).json()
        event = w.next()
        assert (event["type"], rv(event["object"])) == ("MODIFIED", rv(live))


def test_watch_from_zero_sends_synthetic_added_first(api: httpx.Client) -> None:
    create(api, "z-1", {"w": "zero"})
    create(api, "z-2", {"w": "zero"})
    with Watch(api, WF, {"resourceVersion": "0", "labelSelector": "w=zero"}) as w:
        first = [w.next(), w.next()]
        assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in first) == [
            ("ADDED", "z-1"),
            ("ADDED", "z-2"),
        ]
        patched = api.patch(f"{WF}/z-1", json={"status": {"ready": True}}, headers=MERGE).json()
        event = w.next()
        assert (event["type"], rv(event["object"])) == ("MODIFIED", rv(patched))
    # Without resourceVersion at all: the same.
    with Watch(api, WF, {"labelSelector": "w=zero", "fieldSelector": "metadata.name=z-2"}) as w:
        event = w.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "z-2")


def test_watch_with_field_selector(api: httpx.Client) -> None:
    create(api, "f-1")
    create(api, "f-2")
    with Watch(api, WF, {"resourceVersion": current_rv(api), "fieldSelector": "metadata.name=f-2"}) as w:
        api.patch(f"{WF}/f-1", json={"status": {"ready": True}}, headers=MERGE)
        changed = api.patch(f"{WF}/f-2", json={"status": {"ready": True}}, headers=MERGE).json()
        event = w.next()
        assert event["object"]["metadata"]["name"] == "f-2"
        assert rv(event["object"]) == rv(changed)
    # All namespaces, filtered by namespace.
    with Watch(
        api, ALL_WF, {"resourceVersion": current_rv(api), "fieldSelector": "metadata.namespace=default"}
    ) as w:
        api.patch(f"{WF}/f-1", json={"status": {"ready": False}}, headers=MERGE)
        other = create(api, "f-3", ns="default")
        event = w.next()
        assert (event["type"], event["object"]["metadata"]["namespace"], rv(event["object"])) == (
            "ADDED",
            "default",
            rv(other),
        )


def test_watch_timeout_seconds_closes_the_stream(api: httpx.Client) -> None:
    start = time.monotonic()
    with Watch(api, WF, {"resourceVersion": current_rv(api), "timeoutSeconds": "1"}) as w:
        assert w.response.status_code == 200
        assert w.rest() == []
    assert 0.9 <= time.monotonic() - start < 8


def test_watch_bookmarks(api: httpx.Client) -> None:
    start_rv = current_rv(api)
    with Watch(
        api,
        WF,
        {"resourceVersion": start_rv, "allowWatchBookmarks": "true", "fieldSelector": "metadata.name=bm"},
    ) as w:
        event = w.next()
        assert event["type"] == "BOOKMARK"
        assert event["object"]["kind"] == "Workflow"
        assert event["object"]["apiVersion"] == f"{G}/{V}"
        assert int(event["object"]["metadata"]["resourceVersion"]) >= int(start_rv)
        created = create(api, "bm")
        while (event := w.next())["type"] == "BOOKMARK":
            pass
        assert (event["type"], rv(event["object"])) == ("ADDED", rv(created))
        while (event := w.next())["type"] != "BOOKMARK":
            pass
        assert int(event["object"]["metadata"]["resourceVersion"]) >= int(rv(created))


def test_watch_without_bookmarks_asked_sends_none(api: httpx.Client) -> None:
    with Watch(api, WF, {"resourceVersion": current_rv(api), "timeoutSeconds": "1"}) as w:
        assert w.rest() == []


def test_watch_before_compaction_gets_410(api: httpx.Client, server: ServerProcess) -> None:
    create(api, "compact-1")
    store = SqlStore(f"sqlite:///{server.state_dir}/slurmlink.db")
    try:
        point = store.compact(1)
    finally:
        store.close()
    assert point > 2
    with Watch(api, WF, {"resourceVersion": "1"}) as w:
        assert w.response.status_code == 200
        events = w.rest()
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status"
    assert status["code"] == 410
    assert status["reason"] == "Expired"
    assert status["message"].startswith("too old resource version: 1 (")
    # A watch from a fresh list still works after compaction.
    with Watch(
        api, WF, {"resourceVersion": current_rv(api), "fieldSelector": "metadata.name=compact-2"}
    ) as w:
        created = create(api, "compact-2")
        assert rv(w.next()["object"]) == rv(created)


def test_watch_bad_resource_version(api: httpx.Client) -> None:
    status_body(api.get(WF, params={"watch": "true", "resourceVersion": "abc"}), 400, "BadRequest")


# ---- tables ------------------------------------------------------------------------------------


def test_table_list(api: httpx.Client) -> None:
    create(api, "tbl", {"t": "1"})
    api.patch(
        f"{WF}/tbl",
        json={"status": {"ready": False, "state": "Proposal", "status": "Completed"}},
        headers=MERGE,
    )
    r = api.get(WF, params={"labelSelector": "t=1"}, headers={"Accept": TABLE_ACCEPT})
    assert r.status_code == 200, r.text
    table = r.json()
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"]["resourceVersion"].isdigit()
    cols = table["columnDefinitions"]
    assert cols[0] == {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    }
    by_name = {c["name"]: c for c in cols}
    assert [c["name"] for c in cols if c["priority"] == 0] == [
        "Name",
        "STATE",
        "READY",
        "STATUS",
        "JOBID",
        "AGE",
    ]
    assert {"DESIREDSTATE", "UID", "GID"} <= {c["name"] for c in cols if c["priority"] == 1}
    assert by_name["READY"]["type"] == "boolean"
    assert by_name["AGE"]["type"] == "date"
    (row,) = table["rows"]
    cells = dict(zip([c["name"] for c in cols], row["cells"], strict=True))
    assert cells["Name"] == "tbl"
    assert cells["STATE"] == "Proposal"
    assert cells["READY"] is False
    assert cells["STATUS"] == "Completed"
    assert cells["JOBID"] == "12"
    assert re.fullmatch(r"\d+s", cells["AGE"])
    assert cells["DESIREDSTATE"] == "Proposal"
    assert cells["UID"] == "1001"
    assert cells["DESIREDSTATECHANGE"] is None
    obj = row["object"]
    assert obj["kind"] == "PartialObjectMetadata"
    assert obj["apiVersion"] == "meta.k8s.io/v1"
    assert obj["metadata"]["namespace"] == NS
    assert obj["metadata"]["name"] == "tbl"
    assert obj["metadata"]["labels"] == {"t": "1"}


def test_table_all_namespaces_rows_carry_namespace(api: httpx.Client, labelled: None) -> None:
    table = api.get(ALL_WF, params={"labelSelector": "sel=1"}, headers={"Accept": TABLE_ACCEPT}).json()
    got = sorted((r["object"]["metadata"]["namespace"], r["cells"][0]) for r in table["rows"])
    assert got == [("default", "sel-d"), ("slurm", "sel-a"), ("slurm", "sel-b"), ("slurm", "sel-c")]


def test_table_single_object_and_include_object(api: httpx.Client) -> None:
    create(api, "tbl-one")
    table = api.get(f"{WF}/tbl-one", headers={"Accept": TABLE_ACCEPT}).json()
    assert table["kind"] == "Table"
    assert [r["cells"][0] for r in table["rows"]] == ["tbl-one"]
    assert table["rows"][0]["object"]["metadata"]["namespace"] == NS
    full = api.get(
        f"{WF}/tbl-one", params={"includeObject": "Object"}, headers={"Accept": TABLE_ACCEPT}
    ).json()
    assert full["rows"][0]["object"]["kind"] == "Workflow"
    assert full["rows"][0]["object"]["spec"]["wlmID"] == "slurm"
    none = api.get(f"{WF}/tbl-one", params={"includeObject": "None"}, headers={"Accept": TABLE_ACCEPT}).json()
    assert "object" not in none["rows"][0]
    # A plain Accept gets the plain object.
    assert api.get(f"{WF}/tbl-one", headers={"Accept": "application/json"}).json()["kind"] == "Workflow"


def test_table_for_namespaces(api: httpx.Client) -> None:
    table = api.get("/api/v1/namespaces", headers={"Accept": TABLE_ACCEPT}).json()
    assert [c["name"] for c in table["columnDefinitions"]][:2] == ["Name", "Status"]
    assert {r["cells"][0] for r in table["rows"]} >= {"default", "slurm"}


def test_table_watch_frames(api: httpx.Client) -> None:
    created = create(api, "tw")
    with Watch(
        api, WF, {"resourceVersion": "0", "fieldSelector": "metadata.name=tw"}, accept=TABLE_ACCEPT
    ) as w:
        first = w.next()
        assert first["type"] == "ADDED"
        table = first["object"]
        assert table["kind"] == "Table"
        assert table["apiVersion"] == "meta.k8s.io/v1"
        assert table["metadata"]["resourceVersion"] == rv(created)
        assert [r["cells"][0] for r in table["rows"]] == ["tw"]
        assert table["rows"][0]["object"]["metadata"]["namespace"] == NS
        patched = api.patch(
            f"{WF}/tw", json={"status": {"ready": True, "state": "Proposal"}}, headers=MERGE
        ).json()
        event = w.next()
        assert event["type"] == "MODIFIED"
        row = event["object"]["rows"][0]
        assert row["cells"][1:3] == ["Proposal", True]
        assert event["object"]["metadata"]["resourceVersion"] == rv(patched)
        api.delete(f"{WF}/tw")
        event = w.next()
        assert event["type"] == "DELETED"
        assert event["object"]["rows"][0]["cells"][0] == "tw"


# ---- metrics, health and authentication --------------------------------------------------------


def test_metrics(api: httpx.Client) -> None:
    assert api.get(WF).status_code == 200  # counted, whichever tests ran before
    r = api.get("/metrics")
    assert r.status_code == 200
    assert "slurmlink_api_requests_total{" in r.text
    assert 'verb="get"' in r.text


def _watch_counters(api: httpx.Client) -> tuple[float, float]:
    """slurmlink_api_watch_events_total and _writes_total for workflows."""
    text = api.get("/metrics").text
    values = []
    for name in ("slurmlink_api_watch_events_total", "slurmlink_api_watch_writes_total"):
        match = re.search(rf'^{name}\{{resource="workflows"\}} (\S+)$', text, re.MULTILINE)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


def test_metrics_count_watch_events_and_writes(api: httpx.Client) -> None:
    """Each event a watcher receives is counted once; events queued together go out in one write."""
    events0, writes0 = _watch_counters(api)
    with Watch(api, WF, {"resourceVersion": current_rv(api), "fieldSelector": "metadata.name=counted"}) as w:
        create(api, "counted")
        assert w.next()["type"] == "ADDED"
        api.patch(f"{WF}/counted", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE)
        assert w.next()["type"] == "MODIFIED"
        api.delete(f"{WF}/counted")
        assert w.next()["type"] == "DELETED"
        _wait(lambda: _watch_counters(api)[0] - events0 >= 3, what="three counted watch events")
    events, writes = _watch_counters(api)
    # Other tests' watches may run meanwhile, so at least this watch's three, and never fewer
    # writes than one per distinct moment: here between one and three.
    assert events - events0 >= 3
    assert 1 <= writes - writes0 <= events - events0


def test_health_is_open_everything_else_needs_auth(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as anon:
        for path in ("/healthz", "/readyz", "/livez"):
            r = anon.get(path)
            assert r.status_code == 200, path
            assert r.text == "ok"
        for method, path in (
            ("GET", "/api"),
            ("GET", "/api/v1"),
            ("GET", "/apis"),
            ("GET", f"/apis/{G}"),
            ("GET", GV),
            ("GET", "/version"),
            ("GET", "/openapi/v2"),
            ("GET", "/openapi/v3"),
            ("GET", "/metrics"),
            ("GET", "/api/v1/namespaces"),
            ("GET", "/api/v1/namespaces/slurm"),
            ("GET", WF),
            ("GET", ALL_WF),
            ("GET", f"{WF}/x"),
            ("POST", WF),
            ("DELETE", f"{WF}/x"),
            ("GET", "/no/such/path"),
        ):
            r = anon.request(method, path)
            body = status_body(r, 401, "Unauthorized")
            assert body["message"] == "Unauthorized", path


def test_unknown_paths_are_not_found(api: httpx.Client) -> None:
    status_body(api.get("/no/such/path"), 404, "NotFound")
    status_body(api.get(f"{GV}/namespaces/{NS}/workflows/a/b/c"), 404, "NotFound")


def test_method_not_allowed(api: httpx.Client) -> None:
    status_body(api.put(WF, json={}), 405, "MethodNotAllowed")
    status_body(api.post("/apis", json={}), 405, "MethodNotAllowed")
    # Across all namespaces a namespaced kind can only be listed and watched.
    status_body(api.post(ALL_WF, json=workflow("everywhere", namespace=NS)), 405, "MethodNotAllowed")
    status_body(api.delete(ALL_WF), 405, "MethodNotAllowed")
    status_body(api.get(f"{ALL_WF}/x"), 404, "NotFound")


def test_names_and_labels_are_validated(api: httpx.Client) -> None:
    for bad in ("Upper", "under_score", "-dash", "a/b", "x" * 254):
        body = status_body(api.post(WF, json=workflow(bad)), 422, "Invalid")
        assert body["details"]["causes"][0]["field"] == "metadata.name"
        assert "RFC 1123 subdomain" in body["message"]
    assert api.post(WF, json=workflow("ok.dotted-name")).status_code == 201
    body = status_body(
        api.post(
            "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}
        ),
        422,
        "Invalid",
    )
    assert "RFC 1123 label" in body["message"]
    for labels in ({"bad key": "v"}, {"k": "bad value"}, {"k": "x" * 64}, {"Bad.Prefix/k": "v"}, {"k": 1}):
        status_body(api.post(WF, json=workflow("bad-labels", labels)), 422, "Invalid")
    bad_meta = workflow("bad-meta")
    bad_meta["metadata"]["finalizers"] = "not-a-list"
    assert status_body(api.post(WF, json=bad_meta), 422, "Invalid")["details"]["causes"][0]["field"] == (
        "metadata.finalizers"
    )
    bad_meta["metadata"] = {"name": "bad-meta", "annotations": {"a": 1}}
    status_body(api.post(WF, json=bad_meta), 422, "Invalid")
    create(api, "good-labels", {"example.com/k": "v", "k": ""})
    r = api.patch(
        f"{WF}/good-labels", json={"metadata": {"labels": {"k": "no spaces allowed"}}}, headers=MERGE
    )
    assert status_body(r, 422, "Invalid")["details"]["causes"][0]["field"] == "metadata.labels"


def test_dry_run_changes_nothing(api: httpx.Client) -> None:
    start = current_rv(api)
    r = api.post(WF, params={"dryRun": "All"}, json=workflow("dry"))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"]["name"] == "dry"
    status_body(api.get(f"{WF}/dry"), 404, "NotFound")
    body = workflow("dry")
    body["spec"]["desiredState"] = "Bogus"
    status_body(api.post(WF, params={"dryRun": "All"}, json=body), 422, "Invalid")
    status_body(api.post(WF, params={"dryRun": "Some"}, json=workflow("dry")), 400, "BadRequest")

    obj = create(api, "dry-existing")
    after_create = current_rv(api)
    assert int(after_create) > int(start)
    r = api.patch(
        f"{WF}/dry-existing",
        params={"dryRun": "All"},
        json={"metadata": {"labels": {"a": "b"}}},
        headers=MERGE,
    )
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["labels"] == {"a": "b"}
    changed = json.loads(json.dumps(obj))
    changed["metadata"]["labels"] = {"put": "x"}
    assert api.put(f"{WF}/dry-existing", params={"dryRun": "All"}, json=changed).status_code == 200
    r = api.delete(f"{WF}/dry-existing", params={"dryRun": "All"})
    assert r.status_code == 200, r.text
    r = api.request("DELETE", f"{WF}/dry-existing", json={"dryRun": ["All"]})
    assert r.status_code == 200, r.text
    status_body(api.post(WF, params={"dryRun": "All"}, json=workflow("dry-existing")), 409, "AlreadyExists")
    assert (
        api.delete(WF, params={"dryRun": "All", "fieldSelector": "metadata.name=dry-existing"}).status_code
        == 200
    )
    assert api.get(f"{WF}/dry-existing").json() == obj
    assert current_rv(api) == after_create


# ---- robustness --------------------------------------------------------------------------------


def _open_watches(api: httpx.Client) -> float:
    text = api.get("/metrics").text
    match = re.search(r'^slurmlink_api_watches\{resource="workflows"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_closed_watches_are_noticed(api: httpx.Client) -> None:
    _wait(lambda: _open_watches(api) == 0, what="no open watches")
    watches = [Watch(api, WF, {"resourceVersion": current_rv(api)}) for _ in range(3)]
    try:
        assert _open_watches(api) == 3
    finally:
        for w in watches:
            w.close()
    # Nothing is written: the server must notice the disconnects by itself.
    _wait(lambda: _open_watches(api) == 0, what="the closed watches to be released")


def test_concurrent_patches_all_apply(api: httpx.Client) -> None:
    create(api, "busy")
    workers = 40

    def label(i: int) -> int:
        r = api.patch(f"{WF}/busy", json={"metadata": {"labels": {f"k{i}": str(i)}}}, headers=MERGE)
        return r.status_code

    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(label, range(workers)))
    assert codes == [200] * workers
    labels = api.get(f"{WF}/busy").json()["metadata"]["labels"]
    assert labels == {f"k{i}": str(i) for i in range(workers)}


def test_sigterm_with_open_watches_stops_promptly(tmp_path: Path) -> None:
    """Open watches end first, as the Kubernetes API server ends them: the watcher, reading as any
    does, sees its stream end, and the server exits without waiting out its graceful-shutdown
    timeout (2 s) or logging a cancelled watch as an error."""
    proc = ServerProcess(tmp_path / "state", extra_args=("--no-controllers",))
    proc.start()
    ended: list[str] = []
    try:
        with proc.client() as client:
            watch = Watch(client, ALL_WF, {"resourceVersion": "0"})

            def read() -> None:
                try:
                    while True:
                        watch.next()
                except StopIteration:
                    ended.append("end of stream")
                except httpx.TransportError as exc:
                    ended.append(f"transport error: {exc!r}")

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                assert proc.proc is not None
                start = time.monotonic()
                proc.proc.send_signal(signal.SIGTERM)
                proc.proc.wait(15)
                assert time.monotonic() - start < 2
                reader.join(10)
                assert ended == ["end of stream"], ended
            finally:
                with contextlib.suppress(httpx.TransportError):
                    watch.close()
    finally:
        proc.stop()
    log = proc.log_tail(400)
    assert "graceful shutdown exceeded" not in log and "Exception in ASGI application" not in log, log


# ---- what the real kubectl prints ----------------------------------------------------------------


@pytest.fixture(params=["1.20", "1.32"])
def kubectl(
    request: pytest.FixtureRequest, server: ServerProcess
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run one real kubectl (1.20 or 1.32) as the admin, in namespace ``slurm``."""
    binary = request.getfixturevalue("kubectl_120" if request.param == "1.20" else "kubectl_132")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_kubectl(binary, server.kubeconfig, "-n", NS, *args, input=input, timeout=60)

    return run


def test_kubectl_error_texts(
    request: pytest.FixtureRequest, kubectl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    name = f"kc-err-{uuid.uuid4().hex[:6]}"
    r = kubectl("get", "workflow", "nope")
    assert r.stderr.strip() == f'Error from server (NotFound): workflows.{G} "nope" not found'
    r = kubectl("get", "workflow", "nope", "-n", "nons")
    assert r.stderr.strip() == 'Error from server (NotFound): namespaces "nons" not found'
    manifest = json.dumps(workflow(name))
    r = kubectl("create", "-f", "-", input=manifest)
    assert r.returncode == 0, r.stderr
    r = kubectl("create", "-f", "-", input=manifest)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        'Error from server (AlreadyExists): error when creating "STDIN": '
        f'workflows.{G} "{name}" already exists'
    )
    r = kubectl("patch", "workflow", name, "--type=merge", "-p", '{"spec":{"desiredState":"Bogus"}}')
    assert r.stderr.strip() == (
        f'The Workflow "{name}" is invalid: spec.desiredState: Unsupported value: "Bogus": supported values: '
        '"Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"'
    )
    r = kubectl("patch", "workflow", name, "-p", '{"spec":{"wlmID":"x"}}')
    unsupported = (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )
    if request.node.callspec.params["kubectl"] == "1.20":
        assert r.stderr.strip() == f"Error from server (UnsupportedMediaType): {unsupported}"
    else:  # newer kubectl words the same 415 its own way
        assert r.stderr.strip() == (
            "error: application/strategic-merge-patch+json is not supported by "
            f"{G}/v1alpha7, Kind=Workflow: {unsupported}"
        )
    r = kubectl("patch", "workflow", name, "--type=json", "-p", '[{"op":"remove","path":"/status/nothere"}]')
    assert r.returncode == 1
    assert 'doc is missing path: "/status/nothere"' in r.stderr
    r = kubectl("patch", "workflow", name, "--type=json", "-p", '{"op":"add"}')
    assert r.returncode == 1
    r = kubectl("delete", "workflow", "nope")
    assert r.stderr.strip() == f'Error from server (NotFound): workflows.{G} "nope" not found'
    assert kubectl("delete", "workflow", name).returncode == 0


def test_kubectl_patch_and_tables(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], api: httpx.Client
) -> None:
    name = f"kc-tbl-{uuid.uuid4().hex[:6]}"
    assert kubectl("apply", "-f", "-", input=json.dumps(workflow(name, {"kc": name}))).returncode == 0
    status = '{"status":{"state":"Proposal","ready":true,"status":"Completed"}}'
    r = kubectl("patch", "workflow", name, "--type=merge", "-p", status)
    assert r.stdout.strip() == f"workflow.{G}/{name} patched", r.stderr
    r = kubectl("patch", "workflow", name, "--type=merge", "-p", status)
    assert r.stdout.strip() == f"workflow.{G}/{name} patched (no change)", r.stderr
    r = kubectl("get", f"workflows.{G}", "-A", "-l", f"kc={name}")
    lines = [line.split() for line in r.stdout.splitlines()]
    assert lines[0] == ["NAMESPACE", "NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"], r.stderr
    assert lines[1][:6] == [NS, name, "Proposal", "true", "Completed", "12"]
    assert re.fullmatch(r"\d+s", lines[1][6])
    r = kubectl("get", "workflow", name, "-o", "wide")
    header = r.stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"]
    assert {"DESIREDSTATE", "UID", "GID"} <= set(header)
    r = kubectl(
        "get", "workflows", "--no-headers", "-o", "custom-columns=N:.metadata.name", "-l", f"kc={name}"
    )
    assert r.stdout.split() == [name]
    r = kubectl("get", "workflow", name, "-o", "jsonpath={.spec.desiredState}/{.status.state}")
    assert r.stdout == "Proposal/Proposal"
    assert kubectl("get", "workflows", "-n", "dws-system").stderr.strip() == (
        "No resources found in dws-system namespace."
    )
    assert kubectl("delete", "workflow", name).returncode == 0


def test_kubectl_delete_waits_for_finalizers(
    request: pytest.FixtureRequest,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    server: ServerProcess,
    api: httpx.Client,
) -> None:
    name = f"kc-fin-{uuid.uuid4().hex[:6]}"
    body = workflow(name)
    body["metadata"]["finalizers"] = ["example.com/hold"]
    assert api.post(WF, json=body).status_code == 201
    binary = request.getfixturevalue(
        "kubectl_120" if request.node.callspec.params["kubectl"] == "1.20" else "kubectl_132"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBECACHEDIR")}
    env["HOME"] = str(session_home())
    proc = subprocess.Popen(
        [str(binary), f"--kubeconfig={server.kubeconfig}", "-n", NS, "delete", "workflow", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the DELETE returned; kubectl then waits
        assert line.strip() == f'workflow.{G} "{name}" deleted'
        _wait(lambda: "deletionTimestamp" in api.get(f"{WF}/{name}").json()["metadata"], what="deletion mark")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        r = api.patch(f"{WF}/{name}", json={"metadata": {"finalizers": None}}, headers=MERGE)
        assert r.status_code == 200, r.text
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    status_body(api.get(f"{WF}/{name}"), 404, "NotFound")


def test_kubectl_discovery_and_version(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    r = kubectl("api-resources", f"--api-group={G}", "-o", "name")
    assert r.returncode == 0, r.stderr
    assert f"workflows.{G}" in r.stdout.split()
    r = kubectl("version", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["serverVersion"]["gitVersion"].startswith("v1.")
