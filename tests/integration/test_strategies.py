"""Per-kind strategy features through the real server and kubectl: field selectors a kind declares,
pruning of unknown fields and ``fieldValidation``, and ``/status`` served only where a kind has it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.waiting import wait_for

G = "dataworkflowservices.github.io"
GV = f"/apis/{G}/v1alpha2"
WF = f"{GV}/namespaces/slurm/workflows"
MERGE = {"Content-Type": "application/merge-patch+json"}

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def workflow(name: str, job_id: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/v1alpha2",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": job_id,
            "userID": 1001,
            "groupID": 1001,
            **spec,
        },
    }


def _state(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"{WF}/{name}").json().get("status") or {}


def drive(api: httpx.Client, name: str, *states: str) -> None:
    for state in states:
        r = api.patch(f"{WF}/{name}", json={"spec": {"desiredState": state}}, headers=MERGE)
        assert r.status_code == 200, r.text
        wait_for(
            lambda s=state: _state(api, name).get("state") == s and _state(api, name).get("ready"),
            timeout=20,
            message=f"{name} ready in {state}",
        )


@pytest.fixture(scope="module")
def workflows(api: httpx.Client) -> None:
    for name, job in (("sel-12a", 12), ("sel-12b", 12), ("sel-13", 13)):
        assert api.post(WF, json=workflow(name, job)).status_code == 201
        wait_for(lambda n=name: _state(api, n).get("ready"), timeout=20, message=f"{name} ready")
    drive(api, "sel-12a", "Setup", "DataIn")


def names(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {item["metadata"]["name"] for item in r.json()["items"]}


def test_field_selectors_declared_by_the_kind(api: httpx.Client, workflows: None) -> None:
    selected = names(
        api.get(f"{GV}/workflows", params={"fieldSelector": "status.state=DataIn,spec.jobID=12"})
    )
    assert selected == {"sel-12a"}
    assert names(api.get(WF, params={"fieldSelector": "spec.jobID=12"})) >= {"sel-12a", "sel-12b"}
    assert "sel-12a" not in names(api.get(WF, params={"fieldSelector": "spec.jobID!=12"}))
    assert names(api.get(WF, params={"fieldSelector": "spec.jobID=13,metadata.name=sel-13"})) == {"sel-13"}
    with api.stream(
        "GET", WF, params={"watch": "1", "fieldSelector": "spec.jobID=13", "timeoutSeconds": "1"}
    ) as stream:
        lines = [line for line in stream.iter_lines() if line.strip()]
    assert len(lines) == 1 and '"sel-13"' in lines[0]


@pytest.mark.parametrize("which", ["kubectl_132", "kubectl_120"])
def test_kubectl_field_selectors(
    which: str, request: pytest.FixtureRequest, server: ServerProcess, workflows: None
) -> None:
    kubectl: Path = request.getfixturevalue(which)
    r = run_kubectl(
        kubectl,
        server.kubeconfig,
        "get",
        "workflows",
        "-A",
        "--field-selector",
        "status.state=DataIn,spec.jobID=12",
        "-o",
        "name",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"workflow.{G}/sel-12a"]
    r = run_kubectl(kubectl, server.kubeconfig, "get", "workflows", "-A", "--field-selector", "spec.bogus=1")
    assert r.returncode != 0
    assert "field label not supported: spec.bogus" in r.stderr


MANIFEST = """apiVersion: dataworkflowservices.github.io/v1alpha2
kind: Workflow
metadata: {name: %s, namespace: slurm}
spec:
  desiredState: Proposal
  dwDirectives: []
  wlmID: slurm
  jobID: 7
  userID: 1001
  groupID: 1001
  bogus: typo
"""


def test_strict_field_validation_with_kubectl(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    r = run_kubectl(kubectl_132, server.kubeconfig, "create", "-f", "-", input=MANIFEST % "strict")
    assert r.returncode != 0
    assert (
        'Workflow in version "v1alpha2" cannot be handled as a Workflow: strict decoding error: '
        'unknown field "spec.bogus"'
    ) in r.stderr
    assert api.get(f"{WF}/strict").status_code == 404
    r = run_kubectl(
        kubectl_132, server.kubeconfig, "create", "--validate=warn", "-f", "-", input=MANIFEST % "warned"
    )
    assert r.returncode == 0, r.stderr
    assert 'unknown field "spec.bogus"' in r.stderr
    r = run_kubectl(
        kubectl_132, server.kubeconfig, "create", "--validate=false", "-f", "-", input=MANIFEST % "ignored"
    )
    assert r.returncode == 0 and "unknown field" not in r.stderr, r.stderr
    for name in ("warned", "ignored"):
        stored = api.get(f"{WF}/{name}").json()
        assert "bogus" not in stored["spec"]


def test_unknown_fields_in_patches_are_pruned_or_refused(api: httpx.Client) -> None:
    assert api.post(WF, json=workflow("prune", 3)).status_code == 201
    r = api.patch(f"{WF}/prune", json={"spec": {"nope": 1}}, headers=MERGE)
    assert r.status_code == 200 and "nope" not in r.json()["spec"], r.text
    assert r.headers.get_list("warning") == ['299 - "unknown field \\"spec.nope\\""']
    r = api.patch(
        f"{WF}/prune", params={"fieldValidation": "Strict"}, json={"spec": {"nope": 1}}, headers=MERGE
    )
    assert r.status_code == 400 and 'unknown field "spec.nope"' in r.json()["message"], r.text
    r = api.patch(f"{WF}/prune", params={"fieldValidation": "Loose"}, json={}, headers=MERGE)
    assert r.status_code == 400, r.text


def test_status_is_served_only_where_the_kind_has_it(api: httpx.Client) -> None:
    resources = {r["name"] for r in api.get(f"/apis/{G}/v1alpha7").json()["resources"]}
    assert "workflows/status" in resources
    assert "dwdirectiverules/status" not in resources and "computes/status" not in resources
    core = {r["name"] for r in api.get("/api/v1").json()["resources"]}
    assert {"namespaces", "namespaces/status", "configmaps"} <= core and "configmaps/status" not in core
    r = api.get(f"/apis/{G}/v1alpha7/namespaces/dws-system/dwdirectiverules/rules/status")
    assert r.status_code == 404
    assert api.get("/api/v1/namespaces/slurm/status").json()["status"]["phase"] == "Active"


def test_names_follow_the_kinds_rule(api: httpx.Client) -> None:
    r = api.post("/api/v1/namespaces", json={"metadata": {"name": "has.dot"}})
    assert r.status_code == 422 and "RFC 1123 label" in r.json()["message"], r.text
    r = api.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "has.dot"}, "data": {}})
    assert r.status_code == 201, r.text
