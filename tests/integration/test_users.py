"""The ``user`` role: HPC users with their own kubeconfigs see and change only their own objects.

alice and bob are real Unix accounts; ``slurmlink kubeconfig --role user --user LOGIN`` issues their
credentials, and the server resolves each login to its uid with the system's user database. Checked
over HTTP and with the real kubectl 1.32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.serve_process import ServeError
from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.unix_users import ensure_unix_user

ALICE, BOB = "slurmlink-alice", "slurmlink-bob"
CM = "/api/v1/namespaces/default/configmaps"
WF = "/apis/dataworkflowservices.github.io/v1alpha2/namespaces/slurm/workflows"
MERGE = {"Content-Type": "application/merge-patch+json"}
OWNER_UID = "slurmlink.io/owner-uid"
OWNER = "slurmlink.io/owner"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def accounts() -> dict[str, int]:
    return {login: ensure_unix_user(login).pw_uid for login in (ALICE, BOB)}


@pytest.fixture(scope="module")
def kubeconfigs(server: ServerProcess, accounts: dict[str, int]) -> dict[str, Path]:
    return {
        ALICE: server.issue_kubeconfig(ALICE, "user", "default"),
        BOB: server.issue_kubeconfig(BOB, "user", "default", token=True),
        "viewer": server.issue_kubeconfig("auditor", "viewer", "default"),
        "admin": server.kubeconfig,
    }


@pytest.fixture(scope="module")
def clients(server: ServerProcess, kubeconfigs: dict[str, Path]) -> Iterator[dict[str, httpx.Client]]:
    made = {who: server.client(path) for who, path in kubeconfigs.items()}
    try:
        yield made
    finally:
        for client in made.values():
            client.close()


def configmap(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **metadata},
        "data": {"k": name},
    }


def names(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["metadata"]["name"] for item in response.json()["items"]}


def forbidden(response: httpx.Response, user: str, verb: str, name: str | None) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["reason"] == "Forbidden"
    subject = f'configmaps "{name}"' if name else "configmaps"
    assert body["message"].startswith(
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "configmaps" in API group ""'
    ), body["message"]


@pytest.fixture(scope="module")
def created(clients: dict[str, httpx.Client], accounts: dict[str, int]) -> dict[str, dict[str, Any]]:
    out = {}
    for login, name in ((ALICE, "alice-params"), (BOB, "bob-params")):
        r = clients[login].post(CM, json=configmap(name))
        assert r.status_code == 201, r.text
        out[login] = r.json()
    return out


def test_creation_stamps_the_owner(created: dict[str, dict[str, Any]], accounts: dict[str, int]) -> None:
    for login, obj in created.items():
        assert obj["metadata"]["labels"][OWNER_UID] == str(accounts[login])
        assert obj["metadata"]["annotations"][OWNER] == login


def test_each_user_lists_and_watches_only_their_own(
    clients: dict[str, httpx.Client], created: dict[str, dict[str, Any]]
) -> None:
    assert names(clients[ALICE].get(CM)) == {"alice-params"}
    assert names(clients[BOB].get(CM)) == {"bob-params"}
    assert names(clients[ALICE].get("/api/v1/configmaps")) == {"alice-params"}
    with clients[BOB].stream("GET", CM, params={"watch": "1", "timeoutSeconds": "1"}) as stream:
        seen = [line for line in stream.iter_lines() if line.strip()]
    assert len(seen) == 1 and '"bob-params"' in seen[0]


def test_a_viewer_and_the_admin_see_both(
    clients: dict[str, httpx.Client], created: dict[str, dict[str, Any]]
) -> None:
    assert {"alice-params", "bob-params"} <= names(clients["viewer"].get(CM))
    assert {"alice-params", "bob-params"} <= names(clients["admin"].get(CM))


def test_bob_cannot_touch_alices_object(
    clients: dict[str, httpx.Client], created: dict[str, dict[str, Any]]
) -> None:
    bob, path = clients[BOB], f"{CM}/alice-params"
    forbidden(bob.get(path), BOB, "get", "alice-params")
    forbidden(
        bob.patch(path, json={"data": {"k": "bob was here"}}, headers=MERGE), BOB, "patch", "alice-params"
    )
    forbidden(bob.delete(path), BOB, "delete", "alice-params")
    assert clients[ALICE].get(path).json()["data"] == {"k": "alice-params"}


def test_nobody_forges_or_changes_the_owner(
    clients: dict[str, httpx.Client], accounts: dict[str, int], created: dict[str, dict[str, Any]]
) -> None:
    alice = clients[ALICE]
    forged = configmap("forged", labels={OWNER_UID: str(accounts[BOB])})
    r = alice.post(CM, json=forged)
    assert r.status_code == 403 and "cannot be set or changed by a user" in r.json()["message"], r.text
    r = alice.post(CM, json=configmap("forged2", annotations={OWNER: BOB}))
    assert r.status_code == 403, r.text
    r = alice.patch(f"{CM}/alice-params", json={"metadata": {"labels": {OWNER_UID: "0"}}}, headers=MERGE)
    assert r.status_code == 403, r.text
    # Dropping the marks is no way out either: they survive the write.
    r = alice.patch(
        f"{CM}/alice-params", json={"metadata": {"labels": None, "annotations": None}}, headers=MERGE
    )
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["labels"][OWNER_UID] == str(accounts[ALICE])
    # Naming herself is fine (what `kubectl get -o yaml | kubectl apply -f -` sends back).
    mine = configmap("self-named", labels={OWNER_UID: str(accounts[ALICE])}, annotations={OWNER: ALICE})
    assert alice.post(CM, json=mine).status_code == 201
    # The admin may hand an object to someone else.
    r = clients["admin"].patch(
        f"{CM}/self-named", json={"metadata": {"labels": {OWNER_UID: str(accounts[BOB])}}}, headers=MERGE
    )
    assert r.status_code == 200, r.text
    assert "self-named" in names(clients[BOB].get(CM))


def test_users_change_and_delete_their_own(clients: dict[str, httpx.Client]) -> None:
    alice = clients[ALICE]
    assert alice.post(CM, json=configmap("scratch")).status_code == 201
    r = alice.patch(f"{CM}/scratch", json={"data": {"k": "v2"}}, headers=MERGE)
    assert r.status_code == 200 and r.json()["data"] == {"k": "v2"}, r.text
    assert alice.delete(f"{CM}/scratch").status_code == 200
    assert alice.get(f"{CM}/scratch").status_code == 404


def test_users_may_not_create_what_their_kind_does_not_allow(clients: dict[str, httpx.Client]) -> None:
    body = {
        "apiVersion": "dataworkflowservices.github.io/v1alpha2",
        "kind": "Workflow",
        "metadata": {"name": "mine"},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": 1,
            "userID": 0,
            "groupID": 0,
        },
    }
    r = clients[ALICE].post(WF, json=body)
    assert r.status_code == 403, r.text
    assert 'cannot create resource "workflows"' in r.json()["message"]


def test_users_read_the_workflows_of_their_own_jobs(
    clients: dict[str, httpx.Client], accounts: dict[str, int]
) -> None:
    admin = clients["admin"]
    for who, uid in accounts.items():
        body = {
            "apiVersion": "dataworkflowservices.github.io/v1alpha2",
            "kind": "Workflow",
            "metadata": {"name": f"bb-{who}"},
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": [],
                "wlmID": "slurm",
                "jobID": uid,
                "userID": uid,
                "groupID": uid,
            },
        }
        assert admin.post(WF, json=body).status_code == 201
    assert names(clients[ALICE].get("/apis/dataworkflowservices.github.io/v1alpha2/workflows")) == {
        f"bb-{ALICE}"
    }
    assert clients[ALICE].get(f"{WF}/bb-{BOB}").status_code == 403
    r = clients[ALICE].patch(f"{WF}/bb-{ALICE}", json={"spec": {"desiredState": "Teardown"}}, headers=MERGE)
    assert r.status_code == 403, r.text


def test_kubectl_as_a_user(
    kubectl_132: Path, kubeconfigs: dict[str, Path], created: dict[str, dict[str, Any]]
) -> None:
    r = run_kubectl(kubectl_132, kubeconfigs[ALICE], "get", "configmaps", "-o", "name")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["configmap/alice-params"] or "configmap/bob-params" not in r.stdout
    r = run_kubectl(kubectl_132, kubeconfigs[BOB], "delete", "configmap", "alice-params")
    assert r.returncode != 0
    assert (
        'Error from server (Forbidden): configmaps "alice-params" is forbidden: User "slurmlink-bob" cannot '
        'delete resource "configmaps" in API group "" in the namespace "default"'
    ) in r.stderr
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-kubectl}\ndata: {a: b}\n"
    r = run_kubectl(kubectl_132, kubeconfigs[BOB], "create", "-f", "-", input=manifest)
    assert r.returncode == 0, r.stderr
    r = run_kubectl(
        kubectl_132,
        kubeconfigs[BOB],
        "get",
        "configmap",
        "from-kubectl",
        "-o",
        "jsonpath={.metadata.annotations.slurmlink\\.io/owner}",
    )
    assert r.stdout == BOB, r.stderr


def test_a_user_credential_needs_a_unix_account(server: ServerProcess) -> None:
    with pytest.raises(ServeError) as info:
        server.issue_kubeconfig("no-such-login-here", "user")
    assert 'no Unix user "no-such-login-here"' in str(info.value)
