"""Who may do what with the DWS storage kinds and slurmlink's pools and profiles.

The ``node-agent`` role (``slurmlink kubeconfig --role node-agent --node NAME``, user
``system:node:NAME``): reads Storage and ClientMounts, writes only the Storage named after its node
and its node's ClientMounts (and their status), and is refused everything else in Kubernetes' words.
The ``user`` role reads the objects of their own jobs only; a viewer reads everything; the workload
manager writes a Workflow's objects and only reads Storage and pools.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.resources.dws import ownership
from support.dws_objects import (
    CLIENT_MOUNT,
    DIRECTIVE_BREAKDOWN,
    PERSISTENT_STORAGE_INSTANCE,
    SERVERS,
    STORAGE,
    Example,
    G,
)
from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.unix_users import ensure_unix_user

ALICE, BOB = "slurmlink-alice", "slurmlink-bob"
MERGE = {"Content-Type": "application/merge-patch+json"}
WF = f"/apis/{G}/v1alpha2/namespaces/slurm/workflows"
V7 = "v1alpha7"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def accounts() -> dict[str, int]:
    return {login: ensure_unix_user(login).pw_uid for login in (ALICE, BOB)}


@pytest.fixture(scope="module")
def kubeconfigs(server: ServerProcess, accounts: dict[str, int]) -> dict[str, Path]:
    return {
        "n1": server.issue_kubeconfig(None, "node-agent", node="n1"),
        "n2": server.issue_kubeconfig(None, "node-agent", node="n2", token=True),
        "c1": server.issue_kubeconfig(None, "node-agent", "c1", node="c1"),
        ALICE: server.issue_kubeconfig(ALICE, "user"),
        BOB: server.issue_kubeconfig(BOB, "user"),
        "viewer": server.issue_kubeconfig("auditor", "viewer"),
        "wlm": server.issue_kubeconfig("slurm-dws", "workload-manager", "slurm"),
        "admin": server.kubeconfig,
    }


@pytest.fixture(scope="module")
def clients(server: ServerProcess, kubeconfigs: dict[str, Path]) -> Iterator[dict[str, httpx.Client]]:
    made = {who: server.client(path) for who, path in kubeconfigs.items()}
    try:
        for ns in ("c1", "c2"):
            r = made["admin"].post("/api/v1/namespaces", json={"metadata": {"name": ns}})
            assert r.status_code == 201, r.text
        yield made
    finally:
        for client in made.values():
            client.close()


def ok(response: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert response.status_code == code, response.text
    return dict(response.json())


def forbidden_text(
    user: str, verb: str, resource: str, namespace: str | None, name: str | None, group: str = G
) -> str:
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
        f'in API group "{group}" {where}'
    )


def refused(response: httpx.Response, text: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["reason"] == "Forbidden" and body["message"] == text, body["message"]


def names(response: httpx.Response) -> set[str]:
    return {item["metadata"]["name"] for item in ok(response)["items"]}


def storage(name: str) -> dict[str, Any]:
    return STORAGE.body(V7, name)


# ---- the node-agent credential ---------------------------------------------------------------------


def test_the_node_agent_identity(clients: dict[str, httpx.Client]) -> None:
    me = ok(clients["n1"].get("/slurmlink/v1/whoami"))
    assert me["user"] == "system:node:n1" and me["roles"] == ["node-agent"] and me["node"] == "n1"
    assert ok(clients["n2"].get("/slurmlink/v1/whoami"))["node"] == "n2"  # a token carries it too


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--role", "node-agent"], "--role node-agent needs --node NAME"),
        (["--role", "node-agent", "--node", "Node_1"], "is not a lowercase RFC 1123 label"),
        (
            ["--role", "node-agent", "--node", "n1", "--user", "bob"],
            "a node agent's user name is system:node:n1",
        ),
        (["--role", "viewer", "--user", "v", "--node", "n1"], "--node is only for --role node-agent"),
        (["--role", "viewer"], "Missing option '--user'"),
    ],
)
def test_kubeconfig_refuses_a_bad_node_agent(server: ServerProcess, args: list[str], error: str) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "slurmlink.cli.main",
            "kubeconfig",
            *args,
            "--state-dir",
            str(server.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 and error in r.stderr, r.stderr


def test_kubeconfig_writes_the_node_agent_file(server: ServerProcess) -> None:
    r = subprocess.run(
        [
            sys.executable,
            *("-m", "slurmlink.cli.main", "kubeconfig", "--role", "node-agent", "--node", "n7"),
            *("--state-dir", str(server.state_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    target = server.state_dir / "node-agent-n7.kubeconfig"
    assert r.stdout.strip() == f"wrote {target} (user system:node:n7, role node-agent, namespace default)"


# ---- Storage: its own node's only -------------------------------------------------------------------------


def test_an_agent_registers_its_storage_and_reports_status(
    clients: dict[str, httpx.Client], kubectl_132: Path, kubeconfigs: dict[str, Path]
) -> None:
    n1 = clients["n1"]
    ok(n1.post(STORAGE.path(V7), json=storage("n1")), 201)
    status = {"capacity": 10 * 1024**3, "status": "Ready", "devices": [{"model": "loop", "status": "Ready"}]}
    ok(n1.patch(STORAGE.path(V7, "n1", "status"), json={"status": status}, headers=MERGE))
    ok(
        n1.patch(
            STORAGE.path("v1alpha2", "n1"),
            json={"metadata": {"labels": {f"{G}/storage": "slurmlink"}}},
            headers=MERGE,
        )
    )
    # kubectl as the agent: the status subresource, then a read-back.
    r = run_kubectl(
        kubectl_132,
        kubeconfigs["n1"],
        *("patch", f"storages.{G}", "n1", "-n", "default", "--subresource=status", "--type=merge"),
        *("-p", json.dumps({"status": {"status": "Drained", "message": "maintenance"}})),
    )
    assert r.returncode == 0, r.stderr
    r = run_kubectl(kubectl_132, kubeconfigs["n1"], "get", f"storages.{G}", "-n", "default", "n1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:4] == ["n1", "Enabled", "Drained", "Live"]


def test_an_agent_is_refused_another_nodes_storage(
    clients: dict[str, httpx.Client], kubectl_132: Path, kubeconfigs: dict[str, Path]
) -> None:
    n1, user = clients["n1"], "system:node:n1"
    ok(clients["admin"].post(STORAGE.path(V7), json=storage("n2")), 201)
    refused(
        n1.post(STORAGE.path(V7), json=storage("n3")),
        forbidden_text(user, "create", "storages", "default", "n3"),
    )
    refused(
        n1.patch(STORAGE.path(V7, "n2", "status"), json={"status": {"status": "Failed"}}, headers=MERGE),
        forbidden_text(user, "patch", "storages", "default", "n2"),
    )
    current = ok(n1.get(STORAGE.path(V7, "n2")))  # reading is fine
    refused(
        n1.put(STORAGE.path(V7, "n2"), json={**current, "spec": {"state": "Disabled"}}),
        forbidden_text(user, "update", "storages", "default", "n2"),
    )
    refused(n1.delete(STORAGE.path(V7, "n1")), forbidden_text(user, "delete", "storages", "default", "n1"))
    assert {"n1", "n2"} <= names(n1.get(f"/apis/{G}/{V7}/storages"))
    r = run_kubectl(
        kubectl_132,
        kubeconfigs["n1"],
        *(
            "patch",
            f"storages.{G}",
            "n2",
            "-n",
            "default",
            "--type=merge",
            "-p",
            '{"spec":{"state":"Disabled"}}',
        ),
    )
    assert r.returncode != 0
    assert (
        f"Error from server (Forbidden): {forbidden_text(user, 'patch', 'storages', 'default', 'n2')}"
        in r.stderr
    )
    assert ok(clients["admin"].get(STORAGE.path(V7, "n2")))["spec"]["state"] == "Enabled"


# ---- heartbeat Leases: the node's own --------------------------------------------------------------------

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
NODE_LEASES = LEASES.format(ns="slurmlink-node-lease")


def lease_body(name: str, namespace: str = "slurmlink-node-lease") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": "2024-01-01T00:00:00.000000Z",
        },
    }


def test_an_agent_renews_only_its_own_heartbeat_lease(clients: dict[str, httpx.Client]) -> None:
    n1, user, lease = clients["n1"], "system:node:n1", "leases"
    group = "coordination.k8s.io"
    made = ok(n1.post(NODE_LEASES, json=lease_body("n1")), 201)
    made["spec"]["renewTime"] = "2024-01-01T00:00:10.000000Z"
    renewed = ok(n1.put(f"{NODE_LEASES}/n1", json=made))
    assert ok(n1.get(f"{NODE_LEASES}/n1"))["spec"]["renewTime"] == renewed["spec"]["renewTime"]
    ok(n1.patch(f"{NODE_LEASES}/n1", json={"spec": {"leaseDurationSeconds": 30}}, headers=MERGE))
    # Another node's Lease, a Lease of its name elsewhere, the leader's Lease, listing: refused.
    ok(clients["admin"].post(NODE_LEASES, json=lease_body("n2")), 201)
    leader = LEASES.format(ns="dws-system")
    ok(clients["admin"].post(leader, json=lease_body("slurmlink-controllers", "dws-system")), 201)
    for response, verb, namespace, name in [
        (n1.get(f"{NODE_LEASES}/n2"), "get", "slurmlink-node-lease", "n2"),
        (
            n1.patch(f"{NODE_LEASES}/n2", json={"spec": {"holderIdentity": "n1"}}, headers=MERGE),
            "patch",
            "slurmlink-node-lease",
            "n2",
        ),
        (n1.post(NODE_LEASES, json=lease_body("n3")), "create", "slurmlink-node-lease", "n3"),
        (n1.post(LEASES.format(ns="default"), json=lease_body("n1", "default")), "create", "default", "n1"),
        (
            n1.get(f"{leader}/slurmlink-controllers"),
            "get",
            "dws-system",
            "slurmlink-controllers",
        ),
        (n1.delete(f"{NODE_LEASES}/n1"), "delete", "slurmlink-node-lease", "n1"),
        (n1.get(NODE_LEASES), "list", "slurmlink-node-lease", None),
    ]:
        refused(response, forbidden_text(user, verb, lease, namespace, name, group))


@pytest.mark.parametrize(
    ("path", "resource", "namespace", "group"),
    [
        (WF, "workflows", "slurm", G),
        (f"/apis/{G}/{V7}/namespaces/slurm/directivebreakdowns", "directivebreakdowns", "slurm", G),
        (f"/apis/{G}/{V7}/namespaces/default/systemconfigurations", "systemconfigurations", "default", G),
        ("/apis/slurmlink.io/v1/storagepools", "storagepools", None, "slurmlink.io"),
        ("/api/v1/namespaces/default/configmaps", "configmaps", "default", ""),
    ],
)
def test_an_agent_is_refused_everything_else(
    clients: dict[str, httpx.Client], path: str, resource: str, namespace: str | None, group: str
) -> None:
    n1, user = clients["n1"], "system:node:n1"
    refused(n1.get(path), forbidden_text(user, "list", resource, namespace, None, group))
    refused(
        n1.post(path, json={"metadata": {"name": "x"}}),
        forbidden_text(user, "create", resource, namespace, None, group),
    )


def test_the_workload_manager_reads_storage_but_does_not_write_it(clients: dict[str, httpx.Client]) -> None:
    wlm = clients["wlm"]
    assert "n2" in names(wlm.get(f"/apis/{G}/{V7}/storages"))
    refused(
        wlm.post(STORAGE.path(V7), json=storage("wlm-made")),
        forbidden_text("slurm-dws", "create", "storages", "default", None),
    )
    assert wlm.get("/apis/slurmlink.io/v1/storagepools").status_code == 200
    refused(
        wlm.post("/apis/slurmlink.io/v1/storagepools", json={"metadata": {"name": "p"}}),
        forbidden_text("slurm-dws", "create", "storagepools", None, None, "slurmlink.io"),
    )


# ---- ClientMounts: the node's own -----------------------------------------------------------------------


def mount_body(name: str, node: str, namespace: str, uid: int = 1001) -> dict[str, Any]:
    body = CLIENT_MOUNT.body(V7, name, namespace=namespace)
    spec = json.loads(json.dumps(body["spec"]))
    spec["node"] = node
    spec["mounts"][0]["userID"] = spec["mounts"][0]["groupID"] = uid
    body["spec"] = spec
    return body


def mounts_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    out = f"/apis/{G}/{V7}/namespaces/{namespace}/clientmounts"
    return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def test_an_agent_performs_its_nodes_clientmounts(clients: dict[str, httpx.Client]) -> None:
    admin, c1, n1 = clients["admin"], clients["c1"], clients["n1"]
    ok(admin.post(mounts_path("c1"), json=mount_body("job5", "c1", "c1")), 201)
    assert "job5" in names(c1.get(f"/apis/{G}/{V7}/clientmounts"))
    status = {"allReady": True, "mounts": [{"state": "mounted", "ready": True}]}
    wrote = ok(c1.patch(mounts_path("c1", "job5", "status"), json={"status": status}, headers=MERGE))
    assert wrote["status"] == status
    # Another node's agent reads it but may not touch it.
    assert ok(n1.get(mounts_path("c1", "job5")))["status"] == status
    refused(
        n1.patch(mounts_path("c1", "job5", "status"), json={"status": {"allReady": False}}, headers=MERGE),
        forbidden_text("system:node:n1", "patch", "clientmounts", "c1", "job5"),
    )
    # Its own: in its namespace, or elsewhere when aimed at its node; never moved to another node.
    ok(c1.post(mounts_path("c1"), json=mount_body("own", "c1", "c1")), 201)
    ok(c1.post(mounts_path("c2"), json=mount_body("aimed", "c1", "c2")), 201)
    refused(
        c1.post(mounts_path("c2"), json=mount_body("other", "c2", "c2")),
        forbidden_text("system:node:c1", "create", "clientmounts", "c2", "other"),
    )
    refused(
        c1.patch(mounts_path("c2", "aimed"), json={"spec": {"node": "c2"}}, headers=MERGE),
        forbidden_text("system:node:c1", "patch", "clientmounts", "c2", "aimed"),
    )
    refused(
        c1.delete(mounts_path("c1", "own")),
        forbidden_text("system:node:c1", "delete", "clientmounts", "c1", "own"),
    )


# ---- users see their own jobs' objects; a viewer sees all ------------------------------------------


@pytest.fixture(scope="module")
def job_objects(clients: dict[str, httpx.Client], accounts: dict[str, int]) -> dict[str, dict[str, str]]:
    """A Workflow per user with a DirectiveBreakdown, Servers, ClientMount and storage instance each."""
    admin = clients["admin"]
    made: dict[str, dict[str, str]] = {}
    for login, uid in accounts.items():
        short = login.rsplit("-", 1)[-1]
        body = {
            "apiVersion": f"{G}/v1alpha2",
            "kind": "Workflow",
            "metadata": {"name": f"bb-{short}"},
            "spec": {
                "desiredState": "Proposal",
                "dwDirectives": [],
                "wlmID": "slurm",
                "jobID": uid,
                "userID": uid,
                "groupID": uid,
            },
        }
        wf = {**ok(admin.post(WF, json=body), 201), "kind": "Workflow"}

        def make(
            example: Example, obj: dict[str, Any], path: str, wf: dict[str, Any] = wf, uid: int = uid
        ) -> dict[str, Any]:
            if example is not CLIENT_MOUNT:
                obj["spec"] = {**obj["spec"], **({"userID": uid} if "userID" in obj["spec"] else {})}
            ownership.adopt(obj, wf)
            return ok(clients["wlm"].post(path, json=obj), 201)

        dbd = make(
            DIRECTIVE_BREAKDOWN, DIRECTIVE_BREAKDOWN.body(V7, f"{short}-dbd"), DIRECTIVE_BREAKDOWN.path(V7)
        )
        make(SERVERS, SERVERS.body(V7, f"{short}-dbd"), SERVERS.path(V7))
        make(CLIENT_MOUNT, mount_body(f"{short}-mount", "c2", "c2", uid), mounts_path("c2"))
        make(
            PERSISTENT_STORAGE_INSTANCE,
            PERSISTENT_STORAGE_INSTANCE.body(V7, f"{short}-keep"),
            PERSISTENT_STORAGE_INSTANCE.path(V7),
        )
        made[login] = {"short": short, "dbd": dbd["metadata"]["name"]}
    return made


LISTS = {
    "directivebreakdowns": f"/apis/{G}/{V7}/directivebreakdowns",
    "servers": f"/apis/{G}/v1alpha2/servers",
    "clientmounts": f"/apis/{G}/{V7}/clientmounts",
    "persistentstorageinstances": f"/apis/{G}/{V7}/namespaces/slurm/persistentstorageinstances",
}


def test_users_read_only_their_own_jobs_objects(
    clients: dict[str, httpx.Client], job_objects: dict[str, dict[str, str]]
) -> None:
    for login, made in job_objects.items():
        short = made["short"]
        expected = {
            "directivebreakdowns": {f"{short}-dbd"},
            "servers": {f"{short}-dbd"},
            "clientmounts": {f"{short}-mount"},
            "persistentstorageinstances": {f"{short}-keep"},
        }
        for plural, path in LISTS.items():
            assert names(clients[login].get(path)) == expected[plural], (login, plural)
    alice = clients[ALICE]
    refused(
        alice.get(DIRECTIVE_BREAKDOWN.path(V7, "bob-dbd")),
        forbidden_text(ALICE, "get", "directivebreakdowns", "slurm", "bob-dbd"),
    )
    refused(
        alice.patch(DIRECTIVE_BREAKDOWN.path(V7, "alice-dbd"), json={"spec": {"userID": 0}}, headers=MERGE),
        forbidden_text(ALICE, "patch", "directivebreakdowns", "slurm", "alice-dbd"),
    )
    refused(alice.get(f"/apis/{G}/{V7}/storages"), forbidden_text(ALICE, "list", "storages", None, None))
    refused(
        alice.post(STORAGE.path(V7), json=storage("mine")),
        forbidden_text(ALICE, "create", "storages", "default", None),
    )
    refused(
        alice.get("/apis/slurmlink.io/v1/storageprofiles"),
        forbidden_text(ALICE, "list", "storageprofiles", None, None, "slurmlink.io"),
    )
    assert alice.get("/apis/slurmlink.io/v1/storagepools").status_code == 200  # like `scontrol show burst`


def test_a_user_reads_by_user_id_without_the_stamp(
    clients: dict[str, httpx.Client], accounts: dict[str, int]
) -> None:
    """A DirectiveBreakdown naming the user in spec.userID, or a ClientMount mounting for them, is theirs
    to read even when no driver stamped it."""
    wlm, uid = clients["wlm"], accounts[BOB]
    body = DIRECTIVE_BREAKDOWN.body(V7, "bob-unstamped")
    body["spec"] = {**body["spec"], "userID": uid}
    ok(wlm.post(DIRECTIVE_BREAKDOWN.path(V7), json=body), 201)
    ok(wlm.post(mounts_path("c2"), json=mount_body("bob-unstamped", "c2", "c2", uid)), 201)
    assert ok(clients[BOB].get(DIRECTIVE_BREAKDOWN.path(V7, "bob-unstamped")))["spec"]["userID"] == uid
    assert ok(clients[BOB].get(mounts_path("c2", "bob-unstamped")))["spec"]["node"] == "c2"
    assert clients[ALICE].get(mounts_path("c2", "bob-unstamped")).status_code == 403


def test_a_viewer_reads_everything_and_writes_nothing(
    clients: dict[str, httpx.Client], job_objects: dict[str, dict[str, str]]
) -> None:
    viewer = clients["viewer"]
    for path in LISTS.values():
        assert {"alice", "bob"} <= {n.split("-")[0] for n in names(viewer.get(path))}
    assert {"n1", "n2"} <= names(viewer.get(f"/apis/{G}/{V7}/storages"))
    assert viewer.get("/apis/slurmlink.io/v1/storageprofiles").status_code == 200
    refused(
        viewer.patch(STORAGE.path(V7, "n1", "status"), json={"status": {"status": "Failed"}}, headers=MERGE),
        forbidden_text("auditor", "patch", "storages", "default", "n1"),
    )
