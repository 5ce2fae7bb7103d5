"""The real kubectl (Debian 12's 1.20 and the image's 1.32) against ``slurmlink serve``.

Each command and its expected output come from the seeds and the DWS plugin's use of kubectl
(specs/dws.md §5.3, specs/kube-api-compat.md): the plugin's kubeconfig is a workload-manager one
whose context namespace is ``slurm``, and it always names workflows by ``resource.group``.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
import yaml

from support.kubectl import release_patch, run_kubectl, session_home
from support.server import ServerProcess
from support.waiting import wait_for

WF = "workflows.dataworkflowservices.github.io"
_ids = itertools.count(100)

WORKFLOW_YAML = """\
apiVersion: dataworkflowservices.github.io/v1alpha2
kind: Workflow
metadata:
  name: {name}
  labels:
    origin: burst_buffer.lua
spec:
  desiredState: "Proposal"
  dwDirectives:
{directives}
  wlmID: "slurm"
  jobID: "{job}"
  userID: 1001
  groupID: 1001
"""

STATE_QUERY = (
    'desiredState={.spec.desiredState}{"\\n"}'
    'currentState={.status.state}{"\\n"}'
    'status={.status.status}{"\\n"}'
)


def driver_errors_query(state: str) -> str:
    return (
        f'{{range .status.drivers[?(@.watchState=="{state}")]}}==={{"\\n"}}{{@.status}}{{"\\n"}}'
        '{@.driverID}{"\\n"}{@.error}{"\\n"}{end}'
    )


@pytest.fixture(params=["1.20", "1.32"], scope="module")
def kubectl_bin(request: pytest.FixtureRequest, kubectl_120: Path, kubectl_132: Path) -> Path:
    return kubectl_120 if request.param == "1.20" else kubectl_132


class Kubectl:
    """kubectl bound to one binary and kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path, workdir: Path) -> None:
        self.binary, self.kubeconfig, self.workdir = binary, kubeconfig, workdir

    def __call__(self, *args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = run_kubectl(self.binary, self.kubeconfig, *args, timeout=timeout)
        if ok:
            assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
        return result

    def apply_workflow(self, name: str, directives: list[str], job: str) -> subprocess.CompletedProcess[str]:
        body = "\n".join(f'  - "{d}"' for d in directives) if directives else "  []"
        text = WORKFLOW_YAML.format(name=name, directives=body, job=job)
        if not directives:
            text = text.replace("  dwDirectives:\n  []", "  dwDirectives: []")
        path = self.workdir / f"{name}.yaml"
        path.write_text(text)
        return self("apply", "-f", str(path))

    def jsonpath(self, name: str, query: str) -> str:
        return self("get", WF, name, "-o", f"jsonpath={query}").stdout

    def state(self, name: str) -> dict[str, str]:
        out = self.jsonpath(name, STATE_QUERY)
        return dict(line.split("=", 1) for line in out.strip().splitlines())

    def wait_state(self, name: str, state: str, status: str, timeout: float = 15) -> dict[str, str]:
        return wait_for(
            lambda: (s := self.state(name))["currentState"] == state and s["status"] == status and s,
            timeout,
            message=f"{name} to reach {state}/{status}",
        )

    def set_state(self, name: str, state: str) -> subprocess.CompletedProcess[str]:
        return self("patch", WF, name, "--type=merge", "-p", f'{{"spec":{{"desiredState":"{state}"}}}}')


@pytest.fixture
def kc(kubectl_bin: Path, wlm_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(kubectl_bin, wlm_kubeconfig, tmp_path)


def new_name() -> tuple[str, str]:
    job = str(next(_ids))
    return f"bb{job}", job


def test_apply_created_unchanged_configured(kc: Kubectl) -> None:
    name, job = new_name()
    assert kc.apply_workflow(name, ["#DW Proposal action=complete"], job).stdout.strip() == (
        f"workflow.dataworkflowservices.github.io/{name} created"
    )
    assert kc.apply_workflow(name, ["#DW Proposal action=complete"], job).stdout.strip() == (
        f"workflow.dataworkflowservices.github.io/{name} unchanged"
    )
    path = kc.workdir / f"{name}.yaml"
    path.write_text(
        path.read_text().replace("origin: burst_buffer.lua", "origin: burst_buffer.lua\n    site: x")
    )
    assert (
        kc("apply", "-f", str(path)).stdout.strip()
        == f"workflow.dataworkflowservices.github.io/{name} configured"
    )
    assert kc("get", WF, name, "-o", "jsonpath={.metadata.labels.site}").stdout == "x"
    kc("delete", WF, name)


def test_get_all_namespaces_table(kc: Kubectl) -> None:
    name, job = new_name()
    kc.apply_workflow(name, [], job)
    kc.wait_state(name, "Proposal", "Completed")
    out = kc("get", WF, "-A").stdout.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "STATE", "READY", "STATUS", "JOBID", "AGE"]
    row = next(line.split() for line in out[1:] if line.split()[1] == name)
    assert row[0] == "slurm" and row[2:6] == ["Proposal", "true", "Completed", job]
    wide = kc("get", "workflow", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "STATE",
        "READY",
        "STATUS",
        "JOBID",
        "AGE",
        "DESIREDSTATE",
        "DESIREDSTATECHANGE",
        "ELAPSEDTIMELASTSTATE",
        "UID",
        "GID",
    ]
    cells = wide[1].split()
    assert cells[0] == name and cells[6] == "Proposal" and cells[-2:] == ["1001", "1001"]
    kc("delete", WF, name)


def test_get_yaml_shows_the_workflow(kc: Kubectl) -> None:
    name, job = new_name()
    kc.apply_workflow(name, ["#DW Proposal action=complete", "#DW Teardown action=wait"], job)
    kc.wait_state(name, "Proposal", "Completed")
    doc = yaml.safe_load(kc("get", "workflow", "-n", "slurm", name, "-o", "yaml").stdout)
    assert doc["kind"] == "Workflow"
    assert doc["metadata"]["finalizers"] == ["dataworkflowservices.github.io/workflow"]
    assert doc["metadata"]["labels"] == {"origin": "burst_buffer.lua"}
    assert doc["spec"]["jobID"] == job and doc["spec"]["hurry"] is False
    assert doc["status"]["env"] == {"DW_WORKFLOW_NAME": name, "DW_WORKFLOW_NAMESPACE": "slurm"}
    assert doc["status"]["computes"] == {"kind": "Computes", "name": name, "namespace": "slurm"}
    assert [
        (d["driverID"], d["dwdIndex"], d["watchState"], d["completed"], d["status"])
        for d in doc["status"]["drivers"]
    ] == [
        ("tester", 0, "Proposal", True, "Completed"),
        ("tester", 1, "Teardown", False, "Pending"),
    ]
    assert doc["status"]["ready"] is True and doc["status"]["elapsedTimeLastState"]
    v1alpha2 = yaml.safe_load(
        kc("get", "workflows.v1alpha2.dataworkflowservices.github.io", name, "-o", "yaml").stdout
    )
    assert v1alpha2["apiVersion"] == "dataworkflowservices.github.io/v1alpha2"
    assert "forceReady" not in v1alpha2["spec"]
    kc.set_state(name, "Teardown")
    kc("delete", WF, name, "--wait=false")


def test_plugin_jsonpath_queries(kc: Kubectl) -> None:
    """The exact queries of the upstream plugin's get_current_state and get_driver_errors."""
    name, job = new_name()
    kc.apply_workflow(
        name,
        ["#DW Proposal action=error message=TEST_FATAL_ERROR severity=Fatal", "#DW Teardown action=wait"],
        job,
    )
    kc.wait_state(name, "Proposal", "Error")
    assert kc.jsonpath(name, STATE_QUERY) == "desiredState=Proposal\ncurrentState=Proposal\nstatus=Error\n"
    assert kc.jsonpath(name, driver_errors_query("Proposal")) == "===\nError\ntester\nTEST FATAL ERROR\n"
    everything = kc.jsonpath(name, driver_errors_query("").replace('[?(@.watchState=="")]', "[*]"))
    assert everything == "===\nError\ntester\nTEST FATAL ERROR\n===\nPending\ntester\n\n"
    assert kc.jsonpath(name, "{.status.message}") == "DW Directive 0: Reported error: TEST_FATAL_ERROR"
    assert kc.jsonpath(name, "{.spec.hurry}") == "false"
    kc("patch", WF, name, "--type=merge", "-p", '{"spec":{"desiredState":"Teardown","hurry":true}}')
    assert kc.jsonpath(name, "{.spec.hurry}") == "true"
    kc("delete", WF, name, "--wait=false")


def test_patch_merge_and_no_change(kc: Kubectl) -> None:
    name, job = new_name()
    kc.apply_workflow(name, [], job)
    kc.wait_state(name, "Proposal", "Completed")
    assert (
        kc.set_state(name, "Setup").stdout.strip()
        == f"workflow.dataworkflowservices.github.io/{name} patched"
    )
    kc.wait_state(name, "Setup", "Completed")
    assert kc.set_state(name, "Setup").stdout.strip() == (
        f"workflow.dataworkflowservices.github.io/{name} patched (no change)"
    )
    kc("delete", WF, name)


def test_admission_errors_as_kubectl_prints_them(kc: Kubectl) -> None:
    name, job = new_name()
    kc.apply_workflow(name, [], job)
    kc.wait_state(name, "Proposal", "Completed")
    skipped = kc("patch", WF, name, "--type=merge", "-p", '{"spec":{"desiredState":"PreRun"}}', ok=False)
    assert skipped.returncode == 1
    assert skipped.stderr.strip() == (
        'Error from server (Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped): '
        'admission webhook "vworkflow.kb.io" denied the request: '
        'Spec.DesiredState: Invalid value: "PreRun": states cannot be skipped'
    )
    enum = kc("patch", WF, name, "--type=merge", "-p", '{"spec":{"desiredState":"prerun"}}', ok=False)
    assert enum.returncode == 1
    assert enum.stderr.strip() == (
        f'The Workflow "{name}" is invalid: spec.desiredState: Unsupported value: "prerun": '
        'supported values: "Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"'
    )
    path = kc.workdir / "bad.yaml"
    path.write_text(WORKFLOW_YAML.format(name="bbbad", directives='  - "#DW Bogus x=y"', job="1"))
    rejected = kc("apply", "-f", str(path), ok=False)
    assert (
        rejected.returncode == 1
        and "Error from server (invalid directive '#DW Bogus x=y')" in rejected.stderr
    )
    missing = kc("get", WF, "bb999999", ok=False)
    assert missing.stderr.strip() == f'Error from server (NotFound): {WF} "bb999999" not found'
    kc("delete", WF, name)


def test_json_patch_releases_a_waiting_driver(kc: Kubectl) -> None:
    """The seed's DriverWait release (001 install guide / 000 playground exercise 1)."""
    name, job = new_name()
    kc.apply_workflow(name, ["#DW DataIn action=wait"], job)
    for state in ("Setup", "DataIn"):
        kc.wait_state(name, kc.state(name)["currentState"], "Completed")
        kc.set_state(name, state)
    kc.wait_state(name, "DataIn", "DriverWait")
    kc(
        "patch",
        "workflow",
        "-n",
        "slurm",
        name,
        "--type=json",
        "-p",
        release_patch(0),
    )
    kc.wait_state(name, "DataIn", "Completed")
    kc("delete", WF, name)


def test_delete_waits_for_finalizer_and_reports(kc: Kubectl) -> None:
    name, job = new_name()
    kc.apply_workflow(name, [], job)
    kc.wait_state(name, "Proposal", "Completed")
    out = kc("delete", WF, name)
    assert out.stdout.strip() == f'workflow.dataworkflowservices.github.io "{name}" deleted'
    gone = kc("get", WF, name, ok=False)
    assert f'"{name}" not found' in gone.stderr
    assert kc("get", "computes", name, ok=False).returncode == 1


def test_watch_all_namespaces_streams_every_state(kc: Kubectl) -> None:
    name, job = new_name()
    watcher = subprocess.Popen(
        [str(kc.binary), f"--kubeconfig={kc.kubeconfig}", "get", "workflow", "-wA"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HOME": str(session_home()), "PATH": "/usr/bin:/bin"},
    )
    try:
        kc.apply_workflow(name, [], job)
        states = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
        for previous, state in itertools.pairwise(states):
            kc.wait_state(name, previous, "Completed")
            kc.set_state(name, state)
        kc.wait_state(name, "Teardown", "Completed")
    finally:
        watcher.terminate()
        out, _err = watcher.communicate(timeout=10)
    rows = [line.split() for line in out.splitlines() if name in line.split()]
    seen = [r[2] for r in rows if len(r) >= 6 and r[1] == name]
    for state in states:
        assert state in seen, f"watch never showed {state}: {out}"
    assert any(r[2:5] == ["Teardown", "true", "Completed"] for r in rows)
    kc("delete", WF, name)


def test_unknown_namespace_and_no_resources(kc: Kubectl, server: ServerProcess) -> None:
    assert "No resources found in default namespace." in kc("get", "workflow", "-n", "default").stderr
    missing = kc("get", "workflow", "bb1", "-n", "nons", ok=False)
    assert missing.stderr.strip() == 'Error from server (NotFound): namespaces "nons" not found'


LEASE_YAML = """\
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: {name}
  namespace: dws-system
spec:
  holderIdentity: {holder}
  leaseDurationSeconds: 15
  acquireTime: "2026-01-02T03:04:05.123456Z"
  renewTime: "2026-01-02T03:04:05.123456Z"
  leaseTransitions: 0
"""


def test_leases_are_served_like_kubernetes(kubectl_bin: Path, server: ServerProcess, tmp_path: Path) -> None:
    """``kubectl api-resources`` lists leases; ``kubectl get leases -A`` shows the holder (admin only)."""
    kc = Kubectl(kubectl_bin, server.kubeconfig, tmp_path)
    resources = kc("api-resources", "--api-group=coordination.k8s.io").stdout.splitlines()
    assert resources[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert [line.split() for line in resources[1:]] == [["leases", "coordination.k8s.io/v1", "true", "Lease"]]
    name = f"lease{next(_ids)}"
    path = tmp_path / "lease.yaml"
    path.write_text(LEASE_YAML.format(name=name, holder="host-a_42_x"))
    assert kc("create", "-f", str(path)).stdout.strip() == f"lease.coordination.k8s.io/{name} created"
    out = kc("get", "leases", "-A").stdout.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "HOLDER", "AGE"]
    row = next(line.split() for line in out[1:] if line.split()[1] == name)
    assert row[0] == "dws-system" and row[2] == "host-a_42_x"
    path.write_text(LEASE_YAML.format(name=name, holder="x").replace("15", "0"))
    bad = kc("apply", "-f", str(path), ok=False)
    assert bad.returncode != 0 and "leaseDurationSeconds" in bad.stderr
    kc("delete", "lease", "-n", "dws-system", name)


DEPENDENT_LEASE_YAML = """\
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: {name}
  namespace: dws-system
  ownerReferences:
  - apiVersion: coordination.k8s.io/v1
    kind: Lease
    name: {owner}
    uid: {uid}
    blockOwnerDeletion: true
spec: {{}}
"""


@pytest.mark.parametrize("cascade", ["background", "foreground", "orphan"])
def test_delete_cascade_follows_owner_references(
    kubectl_bin: Path, server: ServerProcess, tmp_path: Path, cascade: str
) -> None:
    """``kubectl delete --cascade=...`` sends propagationPolicy; the garbage collector honours it."""
    kc = Kubectl(kubectl_bin, server.kubeconfig, tmp_path)
    owner, dependent = f"owner{next(_ids)}", f"dependent{next(_ids)}"
    path = tmp_path / "owner.yaml"
    path.write_text(LEASE_YAML.format(name=owner, holder="h"))
    kc("create", "-f", str(path))
    uid = kc("get", "lease", "-n", "dws-system", owner, "-o", "jsonpath={.metadata.uid}").stdout
    path.write_text(DEPENDENT_LEASE_YAML.format(name=dependent, owner=owner, uid=uid))
    kc("create", "-f", str(path))
    # kubectl waits until the owner is gone: for foreground, only after its dependent went first.
    out = kc("delete", "lease", "-n", "dws-system", owner, f"--cascade={cascade}", timeout=60).stdout
    assert out.strip() == f'lease.coordination.k8s.io "{owner}" deleted'

    def dependent_state() -> str:
        got = kc("get", "lease", "-n", "dws-system", dependent, "-o", "json", "--ignore-not-found")
        if not got.stdout.strip():
            return "gone"
        refs = yaml.safe_load(got.stdout)["metadata"].get("ownerReferences")
        return "orphaned" if not refs else "owned"

    if cascade == "foreground":
        assert dependent_state() == "gone"
    expected = "orphaned" if cascade == "orphan" else "gone"
    wait_for(lambda: dependent_state() == expected, 20, interval=0.2, message=f"dependent {expected}")
    if cascade == "orphan":
        kc("delete", "lease", "-n", "dws-system", dependent)
