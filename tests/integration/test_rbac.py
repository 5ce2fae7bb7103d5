"""Authentication and role-based authorisation, with httpx and with the real kubectl 1.20 and 1.32.

Credentials are issued the way an operator does it, with ``slurmlink kubeconfig``: a
``workload-manager`` client certificate for the Slurm plugin (namespace ``slurm``), a ``viewer``
certificate, and a ``workload-manager`` bearer token. The server is a default ``slurmlink serve``
(controllers and test driver on, so the DWDirectiveRule ``rules`` exists in ``dws-system``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slurmlink.auth.kubeconfig import build_kubeconfig, load_kubeconfig, write_kubeconfig
from slurmlink.auth.pki import CertificateAuthority
from support.kubectl import run_kubectl, session_home
from support.server import ServerProcess

G = "dataworkflowservices.github.io"
V = "v1alpha2"
GV = f"/apis/{G}/{V}"
WF = f"{GV}/namespaces/slurm/workflows"
RULES = f"{GV}/namespaces/dws-system/dwdirectiverules"
MERGE = {"Content-Type": "application/merge-patch+json"}
WLM_USER = "slurm-dws"
TOKEN_USER = "slurm-dws-token"
VIEWER_USER = "auditor"

pytestmark = pytest.mark.timeout(180)


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("rbac") / "state")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def wlm_kc(server: ServerProcess) -> Path:
    return server.issue_kubeconfig(WLM_USER, "workload-manager", "slurm")


@pytest.fixture(scope="module")
def token_kc(server: ServerProcess) -> Path:
    path = server.issue_kubeconfig(TOKEN_USER, "workload-manager", "slurm", token=True)
    creds = load_kubeconfig(path)
    assert creds.token and not creds.cert_pem
    return path


@pytest.fixture(scope="module")
def viewer_kc(server: ServerProcess) -> Path:
    return server.issue_kubeconfig(VIEWER_USER, "viewer", "slurm")


@pytest.fixture(scope="module")
def bad_token_kc(server: ServerProcess, token_kc: Path) -> Path:
    doc = yaml.safe_load(token_kc.read_text())
    doc["users"][0]["user"]["token"] = "not-a-real-token-" + "0" * 40
    out = server.state_dir.parent / "bad-token.kubeconfig"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def wlm(server: ServerProcess, wlm_kc: Path) -> Iterator[httpx.Client]:
    with server.client(wlm_kc) as client:
        yield client


@pytest.fixture(scope="module")
def wlm_token(server: ServerProcess, token_kc: Path) -> Iterator[httpx.Client]:
    with server.client(token_kc) as client:
        yield client


@pytest.fixture(scope="module")
def viewer(server: ServerProcess, viewer_kc: Path) -> Iterator[httpx.Client]:
    with server.client(viewer_kc) as client:
        yield client


@pytest.fixture(scope="module")
def existing(admin: httpx.Client) -> dict[str, Any]:
    """A Workflow made by the admin, for the read-only checks."""
    r = admin.post(WF, json=workflow("rbac-existing"))
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(params=["1.20", "1.32"])
def kubectl(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(version label, binary) of each real kubectl."""
    binary = request.getfixturevalue("kubectl_120" if request.param == "1.20" else "kubectl_132")
    return request.param.replace(".", ""), binary


# ---- helpers -----------------------------------------------------------------------------------


def workflow(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {"origin": "test_rbac"}},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": 7,
            "userID": 1001,
            "groupID": 1001,
        },
    }


def status_of(r: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert r.status_code == code, r.text
    body = r.json()
    assert (body["kind"], body["apiVersion"], body["status"]) == ("Status", "v1", "Failure")
    assert (body["code"], body["reason"]) == (code, reason)
    return body


def forbidden_text(user: str, verb: str, resource: str, namespace: str | None, name: str | None) -> str:
    subject = f'{resource}.{G} "{name}"' if name else f"{resource}.{G}"
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
        f'in API group "{G}" {where}'
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def gone(client: httpx.Client, path: str) -> bool:
    return client.get(path).status_code == 404


def kubectl_ok(binary: Path, kc: Path, *args: str, input: str | None = None) -> str:
    r = run_kubectl(binary, kc, *args, input=input, timeout=90)
    assert r.returncode == 0, f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def kubectl_fails(binary: Path, kc: Path, *args: str, input: str | None = None) -> str:
    r = run_kubectl(binary, kc, *args, input=input, timeout=90)
    assert r.returncode != 0, f"kubectl {' '.join(args)} unexpectedly worked: {r.stdout}"
    return r.stderr.strip()


class KubectlStream:
    """A long-running kubectl (``get -w``) whose output lines are read with a deadline."""

    def __init__(self, binary: Path, kubeconfig: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBECACHEDIR")}
        env["HOME"] = str(session_home())
        self.proc = subprocess.Popen(
            [str(binary), f"--kubeconfig={kubeconfig}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching line within {timeout}s; saw {seen!r}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"kubectl exited ({self.proc.wait()}) after {seen!r}: {err}")
            seen.append(line)
            if predicate(line):
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


# ---- authentication ----------------------------------------------------------------------------


def test_no_credentials_is_401(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as anon:
        for method, path in (
            ("GET", "/apis"),
            ("GET", GV),
            ("GET", WF),
            ("GET", f"{WF}/x"),
            ("GET", "/api/v1/namespaces/slurm"),
            ("POST", WF),
            ("PATCH", f"{WF}/x"),
            ("DELETE", f"{WF}/x"),
            ("GET", "/openapi/v2"),
        ):
            body = status_of(anon.request(method, path), 401, "Unauthorized")
            assert body["message"] == "Unauthorized"
        assert anon.get("/healthz").status_code == 200


def test_wrong_token_is_401(server: ServerProcess, bad_token_kc: Path) -> None:
    with server.client(bad_token_kc) as client:
        body = status_of(client.get(WF), 401, "Unauthorized")
        assert body["message"] == "Unauthorized"
    with httpx.Client(
        base_url=server.url, verify=server.ssl_context(), headers={"Authorization": "Basic YTpi"}, timeout=10
    ) as basic:
        status_of(basic.get(WF), 401, "Unauthorized")


def test_client_cert_from_another_ca_is_rejected_in_handshake(server: ServerProcess, tmp_path: Path) -> None:
    other_ca = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    pair = other_ca.issue_client("intruder", ["slurmlink:admin"])
    server_ca = server.ca_file.read_bytes()
    path = tmp_path / "intruder.kubeconfig"
    write_kubeconfig(
        path, build_kubeconfig(server.url, server_ca, "intruder", client=pair, namespace="slurm")
    )
    with server.client(path) as client, pytest.raises(httpx.TransportError):
        client.get(WF)


# ---- workload-manager --------------------------------------------------------------------------


@pytest.mark.parametrize("creds", ["cert", "token"])
def test_workload_manager_manages_workflows(
    creds: str, wlm: httpx.Client, wlm_token: httpx.Client, admin: httpx.Client
) -> None:
    client = wlm if creds == "cert" else wlm_token
    name = f"wlm-{creds}"
    r = client.post(WF, json=workflow(name))
    assert r.status_code == 201, r.text
    r = client.patch(f"{WF}/{name}", json={"metadata": {"labels": {"patched": "yes"}}}, headers=MERGE)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["labels"]["patched"] == "yes"

    def put() -> httpx.Response | None:
        current = client.get(f"{WF}/{name}").json()
        current["metadata"]["labels"]["put"] = "yes"
        r = client.put(f"{WF}/{name}", json=current)
        # PUT is conditional: a 409 only means the controller wrote in between; read and try again.
        return None if r.status_code == 409 else r

    r = wait_for(put, what="an unconflicted PUT")
    assert r.status_code == 200, r.text
    assert client.get(WF, params={"labelSelector": "patched=yes"}).status_code == 200
    r = client.delete(f"{WF}/{name}")
    assert r.status_code == 200, r.text
    wait_for(lambda: gone(admin, f"{WF}/{name}"), what=f"{name} to be deleted")


def test_workload_manager_is_forbidden_to_write_directive_rules(wlm: httpx.Client) -> None:
    # Reads are allowed.
    assert wlm.get(f"{RULES}/rules").status_code == 200
    assert wlm.get(RULES).status_code == 200
    rule = wlm.get(f"{RULES}/rules").json()

    body = status_of(wlm.delete(f"{RULES}/rules"), 403, "Forbidden")
    assert body["message"] == (
        f'dwdirectiverules.{G} "rules" is forbidden: User "slurm-dws" cannot delete resource '
        f'"dwdirectiverules" in API group "{G}" in the namespace "dws-system"'
    )
    assert body["details"] == {"name": "rules", "group": G, "kind": "dwdirectiverules"}

    body = status_of(wlm.patch(f"{RULES}/rules", json={"spec": []}, headers=MERGE), 403, "Forbidden")
    assert body["message"] == forbidden_text(WLM_USER, "patch", "dwdirectiverules", "dws-system", "rules")
    body = status_of(wlm.put(f"{RULES}/rules", json=rule), 403, "Forbidden")
    assert body["message"] == forbidden_text(WLM_USER, "update", "dwdirectiverules", "dws-system", "rules")
    new = copy.deepcopy(rule)
    new["metadata"] = {"name": "more-rules", "namespace": "dws-system"}
    body = status_of(wlm.post(RULES, json=new), 403, "Forbidden")
    assert body["message"] == forbidden_text(WLM_USER, "create", "dwdirectiverules", "dws-system", None)
    body = status_of(wlm.delete(RULES), 403, "Forbidden")
    assert body["message"] == forbidden_text(
        WLM_USER, "deletecollection", "dwdirectiverules", "dws-system", None
    )
    # Nothing changed.
    assert wlm.get(f"{RULES}/rules").json() == rule


def test_workload_manager_other_limits(wlm_token: httpx.Client) -> None:
    body = status_of(wlm_token.delete(WF), 403, "Forbidden")
    assert body["message"] == forbidden_text(TOKEN_USER, "deletecollection", "workflows", "slurm", None)
    body = status_of(
        wlm_token.post(
            "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
        ),
        403,
        "Forbidden",
    )
    assert body["message"] == (
        'namespaces is forbidden: User "slurm-dws-token" cannot create resource "namespaces" in API group "" '
        "at the cluster scope"
    )
    assert wlm_token.get("/api/v1/namespaces/slurm").status_code == 200


# ---- viewer ------------------------------------------------------------------------------------


def test_viewer_can_read(viewer: httpx.Client, existing: dict[str, Any]) -> None:
    assert viewer.get(f"{WF}/rbac-existing").json()["metadata"]["uid"] == existing["metadata"]["uid"]
    assert "rbac-existing" in [i["metadata"]["name"] for i in viewer.get(WF).json()["items"]]
    assert viewer.get(f"{GV}/workflows").status_code == 200
    assert viewer.get(f"{RULES}/rules").status_code == 200
    assert viewer.get("/api/v1/namespaces").status_code == 200
    assert viewer.get("/apis").status_code == 200
    with viewer.stream(
        "GET",
        WF,
        params={"watch": "true", "resourceVersion": "0", "fieldSelector": "metadata.name=rbac-existing"},
        timeout=httpx.Timeout(10.0, read=10.0),
    ) as r:
        assert r.status_code == 200
        event = json.loads(next(line for line in r.iter_lines() if line.strip()))
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "rbac-existing")


def test_viewer_cannot_write(viewer: httpx.Client, admin: httpx.Client, existing: dict[str, Any]) -> None:
    current = admin.get(f"{WF}/rbac-existing").json()
    rule = admin.get(f"{RULES}/rules").json()
    cases: list[tuple[str, str, str, str | None, str, Any]] = [
        ("POST", WF, "create", None, "workflows", workflow("viewer-made")),
        (
            "PATCH",
            f"{WF}/rbac-existing",
            "patch",
            "rbac-existing",
            "workflows",
            {"metadata": {"labels": {"a": "b"}}},
        ),
        ("PATCH", f"{WF}/rbac-existing/status", "patch", "rbac-existing", "workflows", {"status": {}}),
        ("PUT", f"{WF}/rbac-existing", "update", "rbac-existing", "workflows", current),
        ("DELETE", f"{WF}/rbac-existing", "delete", "rbac-existing", "workflows", None),
        ("DELETE", WF, "deletecollection", None, "workflows", None),
        ("DELETE", f"{RULES}/rules", "delete", "rules", "dwdirectiverules", None),
        ("PATCH", f"{RULES}/rules", "patch", "rules", "dwdirectiverules", {"spec": []}),
        ("PUT", f"{RULES}/rules", "update", "rules", "dwdirectiverules", rule),
    ]
    for method, path, verb, name, resource, body in cases:
        headers = MERGE if method == "PATCH" else {}
        r = viewer.request(method, path, json=body, headers=headers)
        status = status_of(r, 403, "Forbidden")
        namespace = "dws-system" if resource == "dwdirectiverules" else "slurm"
        assert status["message"] == forbidden_text(VIEWER_USER, verb, resource, namespace, name), (
            method,
            path,
        )
    r = viewer.post(
        "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "v"}}
    )
    status_of(r, 403, "Forbidden")
    # Nothing changed.
    assert admin.get(f"{WF}/rbac-existing").status_code == 200
    assert gone(admin, f"{WF}/viewer-made")
    assert (
        admin.get(f"{RULES}/rules").json()["metadata"]["resourceVersion"]
        == rule["metadata"]["resourceVersion"]
    )


# ---- kubectl -----------------------------------------------------------------------------------


def manifest(name: str, extra_labels: dict[str, str] | None = None) -> str:
    doc = workflow(name)
    doc["metadata"]["labels"].update(extra_labels or {})
    return yaml.safe_dump(doc)


def test_kubectl_workload_manager_apply_patch_delete(
    kubectl: tuple[str, Path], wlm_kc: Path, admin: httpx.Client, tmp_path: Path
) -> None:
    version, binary = kubectl
    name = f"kc-wlm-{version}"
    path = tmp_path / "wf.yaml"
    path.write_text(manifest(name))
    out = kubectl_ok(binary, wlm_kc, "apply", "-f", str(path))
    assert out.strip() == f"workflow.{G}/{name} created"
    path.write_text(manifest(name, {"stage": "two"}))
    out = kubectl_ok(binary, wlm_kc, "apply", "-f", str(path))
    assert out.strip() == f"workflow.{G}/{name} configured"
    out = kubectl_ok(
        binary,
        wlm_kc,
        "patch",
        f"workflows.{G}",
        name,
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"p":"1"}}}',
    )
    assert out.strip() == f"workflow.{G}/{name} patched"
    out = kubectl_ok(binary, wlm_kc, "get", "workflow", name, "-o", "jsonpath={.metadata.labels.p}")
    assert out == "1"
    out = kubectl_ok(binary, wlm_kc, "delete", f"workflows.{G}", name)
    assert out.strip() == f'workflow.{G} "{name}" deleted'
    assert gone(admin, f"{WF}/{name}")


def test_kubectl_token_workload_manager(
    kubectl: tuple[str, Path], token_kc: Path, admin: httpx.Client
) -> None:
    version, binary = kubectl
    name = f"kc-token-{version}"
    out = kubectl_ok(binary, token_kc, "apply", "-f", "-", input=manifest(name))
    assert out.strip() == f"workflow.{G}/{name} created"
    out = kubectl_ok(
        binary, token_kc, "get", "workflows", "--no-headers", "-o", "custom-columns=N:.metadata.name"
    )
    assert name in out.split()
    out = kubectl_ok(binary, token_kc, "delete", "workflow", name)
    assert out.strip() == f'workflow.{G} "{name}" deleted'
    assert gone(admin, f"{WF}/{name}")
    err = kubectl_fails(binary, token_kc, "delete", "dwdirectiverule", "rules", "-n", "dws-system")
    assert err == "Error from server (Forbidden): " + forbidden_text(
        TOKEN_USER, "delete", "dwdirectiverules", "dws-system", "rules"
    )


def test_kubectl_workload_manager_forbidden_on_directive_rules(
    kubectl: tuple[str, Path], wlm_kc: Path, admin: httpx.Client, tmp_path: Path
) -> None:
    _, binary = kubectl
    before = admin.get(f"{RULES}/rules").json()

    err = kubectl_fails(binary, wlm_kc, "delete", f"dwdirectiverules.{G}", "rules", "-n", "dws-system")
    assert err == (
        f'Error from server (Forbidden): dwdirectiverules.{G} "rules" is forbidden: User "slurm-dws" cannot '
        f'delete resource "dwdirectiverules" in API group "{G}" in the namespace "dws-system"'
    )

    err = kubectl_fails(
        binary,
        wlm_kc,
        "patch",
        "dwdirectiverule",
        "rules",
        "-n",
        "dws-system",
        "--type=merge",
        "-p",
        '{"spec":[]}',
    )
    assert err == "Error from server (Forbidden): " + forbidden_text(
        WLM_USER, "patch", "dwdirectiverules", "dws-system", "rules"
    )

    new = {
        "apiVersion": f"{G}/{V}",
        "kind": "DWDirectiveRule",
        "metadata": {"name": "wlm-rules", "namespace": "dws-system"},
        "spec": [],
    }
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump(new))
    err = kubectl_fails(binary, wlm_kc, "create", "-f", str(path))
    assert err == (
        f'Error from server (Forbidden): error when creating "{path}": '
        + forbidden_text(WLM_USER, "create", "dwdirectiverules", "dws-system", None)
    )
    err = kubectl_fails(binary, wlm_kc, "apply", "-f", str(path))
    assert err.startswith("Error from server (Forbidden): ")
    assert forbidden_text(WLM_USER, "create", "dwdirectiverules", "dws-system", None) in err

    after = admin.get(f"{RULES}/rules").json()
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert gone(admin, f"{RULES}/wlm-rules")


def test_kubectl_viewer_reads_but_cannot_write(
    kubectl: tuple[str, Path], viewer_kc: Path, existing: dict[str, Any], admin: httpx.Client
) -> None:
    version, binary = kubectl
    out = kubectl_ok(binary, viewer_kc, "get", "workflows")
    assert out.splitlines()[0].split() == ["NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"]
    assert any(line.split()[0] == "rbac-existing" for line in out.splitlines()[1:])
    out = kubectl_ok(binary, viewer_kc, "get", f"workflows.{G}", "rbac-existing", "-o", "yaml")
    assert yaml.safe_load(out)["metadata"]["uid"] == existing["metadata"]["uid"]
    out = kubectl_ok(binary, viewer_kc, "get", "dwdirectiverules", "-n", "dws-system", "-o", "name")
    assert f"dwdirectiverule.{G}/rules" in out.split()

    watch = KubectlStream(binary, viewer_kc, "get", "workflow", "rbac-existing", "-w", "--no-headers")
    try:
        watch.wait_line(lambda line: line.split()[:1] == ["rbac-existing"])
        # A change made by someone else shows up in the viewer's watch. kubectl drops the first
        # event of its watch (the synthetic ADDED), so a change made before its watch request
        # arrives is not printed: keep changing the object until one is.
        deadline = time.monotonic() + 30
        for attempt in itertools.count():
            labels = {"seen": f"{version}-{attempt}"}
            r = admin.patch(f"{WF}/rbac-existing", json={"metadata": {"labels": labels}}, headers=MERGE)
            assert r.status_code == 200, r.text
            try:
                watch.wait_line(lambda line: line.split()[:1] == ["rbac-existing"], timeout=1.0)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    finally:
        watch.stop()

    name = f"kc-viewer-{version}"
    err = kubectl_fails(binary, viewer_kc, "apply", "-f", "-", input=manifest(name))
    assert err.startswith("Error from server (Forbidden): error when creating")
    assert forbidden_text(VIEWER_USER, "create", "workflows", "slurm", None) in err
    err = kubectl_fails(
        binary,
        viewer_kc,
        "patch",
        "workflow",
        "rbac-existing",
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"v":"1"}}}',
    )
    assert err == "Error from server (Forbidden): " + forbidden_text(
        VIEWER_USER, "patch", "workflows", "slurm", "rbac-existing"
    )
    err = kubectl_fails(binary, viewer_kc, "delete", "workflow", "rbac-existing")
    assert err == "Error from server (Forbidden): " + forbidden_text(
        VIEWER_USER, "delete", "workflows", "slurm", "rbac-existing"
    )
    assert gone(admin, f"{WF}/{name}")
    assert admin.get(f"{WF}/rbac-existing").status_code == 200


def test_kubectl_wrong_token_must_log_in(kubectl: tuple[str, Path], bad_token_kc: Path) -> None:
    _, binary = kubectl
    err = kubectl_fails(binary, bad_token_kc, "get", "workflows")
    assert err.splitlines()[-1] == "error: You must be logged in to the server (Unauthorized)"
