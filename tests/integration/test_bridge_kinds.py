"""The job bridge's kinds through a real ``slurmlink serve`` and the real kubectl: ``slurmlink.io/v1``
SlurmJob and Partition, the seed's ``wlm.sylabs.io/v1alpha1`` SlurmJob, and the virtual Nodes.

No bridge controller runs here: these are the objects themselves (discovery, printer columns,
describe, validation in the API server's words, who may read and write what, which fields change
after creation, status only through ``/status``). The seed's README example and the WLM operator's
examples (``data/wlm/``) must apply unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.unix_users import ensure_unix_user

ALICE, BOB = "slurmlink-alice", "slurmlink-bob"
SJ = "/apis/slurmlink.io/v1/namespaces/default/slurmjobs"
WLM = "/apis/wlm.sylabs.io/v1alpha1/namespaces/default/slurmjobs"
PARTITIONS = "/apis/slurmlink.io/v1/partitions"
NODES = "/api/v1/nodes"
MERGE = {"Content-Type": "application/merge-patch+json"}
DATA = Path(__file__).parent / "data" / "wlm"
V1_FULL = "sj.slurmlink.io"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def accounts() -> dict[str, int]:
    return {login: ensure_unix_user(login).pw_uid for login in (ALICE, BOB)}


@pytest.fixture(scope="module")
def kubeconfigs(server: ServerProcess, accounts: dict[str, int]) -> dict[str, Path]:
    return {
        ALICE: server.issue_kubeconfig(ALICE, "user", "default"),
        BOB: server.issue_kubeconfig(BOB, "user", "default"),
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


@pytest.fixture(scope="module")
def api(clients: dict[str, httpx.Client]) -> httpx.Client:
    return clients["admin"]


def partition(name: str, slurm_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "Partition",
        "metadata": {"name": name},
        "spec": {"slurmName": slurm_name, "cluster": "minikube", **spec},
    }


#: What the bridge would publish for a small site: a limited default partition, an unlimited one with
#: the admin's label for the seed's ``cow`` example, the seed README's ``cpu`` and an uppercase name.
PUBLISHED = [
    partition(
        "debug",
        "debug",
        default=True,
        nodes="compute[1-4]",
        totalNodes=4,
        cpusPerNode=2,
        memoryPerNode="7812Mi",
        maxTime=60,
        defaultTime=10,
        maxNodesPerJob=2,
        features=["avx2"],
        gres=["gpu:a100:2"],
        allowedAccounts=["physics"],
        extraFeatures=[{"name": "cuda", "quantity": 10}, {"name": "singularity", "version": "3.2.0"}],
    ),
    partition("long", "long", totalNodes=4, cpusPerNode=2, features=["avx2", "ib"]),
    partition("cpu", "cpu", totalNodes=3, cpusPerNode=4, memoryPerNode="8Gi", maxTime=600),
    partition("gpu-short", "GPU_Short", totalNodes=4, cpusPerNode=2),
]
PUBLISHED[1]["metadata"]["labels"] = {"wlm.sylabs.io/containers": "singularity"}


@pytest.fixture(scope="module", autouse=True)
def published(api: httpx.Client) -> None:
    """The Partitions every test here may name; jobs are judged against them at creation."""
    for body in PUBLISHED:
        ok(api.post(PARTITIONS, json=body), 201)
    ok(
        api.patch(
            f"{PARTITIONS}/debug/status", json={"status": {"state": "UP", "idleCPUs": 6}}, headers=MERGE
        )
    )
    ok(api.patch(f"{PARTITIONS}/cpu/status", json={"status": {"state": "UP"}}, headers=MERGE))


def kubectl(binary: Path, config: Path, *args: str, stdin: str | None = None) -> str:
    r = run_kubectl(binary, config, *args, input=stdin)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


def kubectl_fails(binary: Path, config: Path, *args: str, stdin: str | None = None) -> str:
    r = run_kubectl(binary, config, *args, input=stdin)
    assert r.returncode != 0, f"kubectl {' '.join(args)} succeeded: {r.stdout}"
    return r.stderr


def ok(response: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert response.status_code == code, response.text
    return dict(response.json())


def table(text: str) -> list[dict[str, str]]:
    """``kubectl get`` output as one dict per row, cut at the header's column starts."""
    lines = text.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    # Headers of two words ("SLURM STATE") start one column, not two.
    starts = [s for s in starts if s == 0 or header[s - 2 : s] == "  "]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], len(header) + 1], strict=True)]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], len(line) + 1], strict=True)}
        for line in lines[1:]
    ]


def slurmjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "SlurmJob",
        "metadata": {"name": name},
        "spec": {"script": "#!/bin/sh\necho hi\n", **spec},
    }


def causes(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert response.status_code == 422 and body["reason"] == "Invalid", response.text
    return {c["field"]: c["message"] for c in body["details"]["causes"]}


# ---- discovery -----------------------------------------------------------------------------------


def test_api_resources_list_both_groups_and_nodes(kubectl_132: Path, server: ServerProcess) -> None:
    rows = {
        line.split()[0]: line.split()[1:]
        for line in kubectl(kubectl_132, server.kubeconfig, "api-resources").splitlines()[1:]
    }
    assert ["part", "slurmlink.io/v1", "false", "Partition"] in [rows.get("partitions")]
    lines = kubectl(kubectl_132, server.kubeconfig, "api-resources", "--api-group=wlm.sylabs.io").splitlines()
    assert lines[1].split() == ["slurmjobs", "sj", "wlm.sylabs.io/v1alpha1", "true", "SlurmJob"]
    lines = kubectl(kubectl_132, server.kubeconfig, "api-resources", "--api-group=slurmlink.io").splitlines()
    assert ["slurmjobs", "sj", "slurmlink.io/v1", "true", "SlurmJob"] in [line.split() for line in lines]
    assert rows["nodes"] == ["no", "v1", "false", "Node"]


def test_discovery_serves_status_where_written(api: httpx.Client) -> None:
    own = {r["name"]: r for r in ok(api.get("/apis/slurmlink.io/v1"))["resources"]}
    assert {"slurmjobs/status", "partitions/status"} <= set(own)
    assert own["slurmjobs"]["namespaced"] is True and own["partitions"]["namespaced"] is False
    seed = {r["name"]: r for r in ok(api.get("/apis/wlm.sylabs.io/v1alpha1"))["resources"]}
    assert set(seed) == {"slurmjobs", "slurmjobs/status"}
    core = {r["name"]: r for r in ok(api.get("/api/v1"))["resources"]}
    assert core["nodes"]["verbs"] == ["get", "list"]


# ---- slurmlink.io/v1 SlurmJob ---------------------------------------------------------------------

FULL_JOB = """\
apiVersion: slurmlink.io/v1
kind: SlurmJob
metadata:
  name: full
spec:
  script: |
    #!/bin/bash
    #SBATCH --job-name=ignored
    srun hostname
  partitions: [debug, long]
  resources:
    nodes: 2
    tasks: 4
    cpusPerTask: 2
    memoryPerNode: 4G
    gpus: a100:1
    gres: gpu:1
    timeLimit: 1-12:00:00
    constraints: avx2&ib
    exclusive: true
  account: physics
  qos: normal
  reservation: maint
  array: 0-9:2%4
  environment:
    - {name: OMP_NUM_THREADS, value: "2"}
    - {name: EMPTY}
  inputs:
    - {upload: up-123, to: data, unpack: tar, sha256: SHA}
    - {path: /etc/hostname, to: ., name: host.txt}
  outputs: ["results/*.csv", "logs/**"]
  ttlSecondsAfterFinished: 3600
""".replace("SHA", "ab" * 32)


def test_create_get_and_describe_a_full_job(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    kubectl(kubectl_132, server.kubeconfig, "apply", "-f", "-", stdin=FULL_JOB)
    stored = ok(api.get(f"{SJ}/full"))
    assert stored["spec"]["resources"]["memoryPerNode"] == "4G"
    assert stored["spec"]["suspend"] is False and stored["spec"]["cancel"] is False
    assert stored["spec"]["inputs"][1] == {
        "path": "/etc/hostname",
        "to": ".",
        "name": "host.txt",
        "unpack": "none",
    }
    assert stored["spec"]["environment"][1] == {"name": "EMPTY"}
    rows = table(kubectl(kubectl_132, server.kubeconfig, "get", V1_FULL, "full"))
    assert list(rows[0]) == ["NAME", "AGE", "STATUS"]
    wide = table(kubectl(kubectl_132, server.kubeconfig, "get", V1_FULL, "full", "-o", "wide"))[0]
    assert list(wide)[:6] == ["NAME", "AGE", "STATUS", "JOBID", "PARTITION", "SLURM STATE"]
    assert wide["PARTITION"] == "debug,long" and wide["TIME LIMIT"] == "1-12:00:00"
    described = kubectl(kubectl_132, server.kubeconfig, "describe", V1_FULL, "full")
    assert "Memory Per Node:  4G" in described and "Ttl Seconds After Finished:  3600" in described


def test_status_columns_and_field_selectors(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    ok(api.post(SJ, json=slurmjob("ran", partition="debug", resources={"memoryPerNode": "4Gi"})), 201)
    ok(api.post(SJ, json=slurmjob("queued", partition="long")), 201)
    status = {
        "phase": "Failed",
        "jobId": "42",
        "partition": "debug",
        "nodes": "compute[1-2]",
        "slurmState": "TIMEOUT",
        "reason": "TimeLimit",
        "exitCode": 0,
        "signal": 15,
        "submitTime": "2026-01-02T03:04:05Z",
        "outputs": [{"path": "results/a.csv", "size": 12, "sha256": "0" * 64}],
        "conditions": [
            {
                "type": "Finished",
                "status": "True",
                "reason": "TIMEOUT",
                "message": "",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            }
        ],
    }
    wrote = ok(api.patch(f"{SJ}/ran/status", json={"status": status}, headers=MERGE))
    assert wrote["status"]["phase"] == "Failed" and wrote["metadata"]["generation"] == 1
    ok(api.patch(f"{SJ}/queued/status", json={"status": {"phase": "Queued"}}, headers=MERGE))
    wide = {
        row["NAME"]: row
        for row in table(kubectl(kubectl_132, server.kubeconfig, "get", V1_FULL, "-o", "wide"))
    }
    assert wide["ran"]["STATUS"] == "Failed" and wide["ran"]["JOBID"] == "42"
    assert wide["ran"]["SLURM STATE"] == "TIMEOUT" and wide["ran"]["EXIT"] == "0:15"
    assert wide["queued"]["PARTITION"] == "long"  # what it asked for, until Slurm says
    names = kubectl(
        kubectl_132, server.kubeconfig, "get", V1_FULL, "--field-selector=status.phase=Failed", "-o", "name"
    )
    assert names.split() == ["slurmjob.slurmlink.io/ran"]
    names = kubectl(
        kubectl_132, server.kubeconfig, "get", V1_FULL, "--field-selector=spec.partition=long", "-o", "name"
    )
    assert names.split() == ["slurmjob.slurmlink.io/queued"]


def test_status_is_written_only_through_status(api: httpx.Client) -> None:
    body = slurmjob("nostatus", partition="debug")
    created = ok(api.post(SJ, json={**body, "status": {"phase": "Succeeded"}}), 201)
    assert "status" not in created  # a create cannot set what /status owns
    patched = ok(api.patch(f"{SJ}/nostatus", json={"status": {"phase": "Succeeded"}}, headers=MERGE))
    assert "status" not in patched
    # /status takes the status and nothing else.
    wrote = ok(
        api.patch(
            f"{SJ}/nostatus/status",
            json={"status": {"phase": "Running"}, "spec": {"partition": "elsewhere"}},
            headers=MERGE,
        )
    )
    assert wrote["status"] == {"phase": "Running"} and wrote["spec"]["partition"] == "debug"
    bad = api.patch(f"{SJ}/nostatus/status", json={"status": {"phase": "Done"}}, headers=MERGE)
    assert "Unsupported value" in causes(bad)["status.phase"]
    bad = api.patch(
        f"{SJ}/nostatus/status",
        json={"status": {"outputs": [{"path": "../x", "size": 1, "sha256": "0" * 64}]}},
        headers=MERGE,
    )
    assert "cannot leave the job directory" in causes(bad)["status.outputs[0].path"]


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"resources": {"memoryPerNode": "4GB"}}, "spec.resources.memoryPerNode", "quantities must match"),
        ({"resources": {"memoryPerCPU": "0"}}, "spec.resources.memoryPerCPU", "must be greater than zero"),
        (
            {"resources": {"memoryPerNode": "4G", "memoryPerCPU": "1G"}},
            "spec.resources.memoryPerCPU",
            "may not be set together",
        ),
        ({"resources": {"timeLimit": "2 hours"}}, "spec.resources.timeLimit", "a time limit is"),
        ({"resources": {"timeLimit": "1:75:00"}}, "spec.resources.timeLimit", "below 60"),
        ({"resources": {"timeLimit": 0}}, "spec.resources.timeLimit", "write UNLIMITED"),
        ({"resources": {"nodes": 0}}, "spec.resources.nodes", "greater than or equal to 1"),
        (
            {"inputs": [{"upload": "u1", "to": "../up"}]},
            "spec.inputs[0].to",
            "cannot leave the job directory",
        ),
        ({"inputs": [{"upload": "u1", "to": "/abs"}]}, "spec.inputs[0].to", "not an absolute path"),
        ({"inputs": [{"path": "relative/file"}]}, "spec.inputs[0].path", "must be an absolute path"),
        ({"inputs": [{"to": "x"}]}, "spec.inputs[0]", "one of upload"),
        ({"inputs": [{"upload": "u1", "path": "/etc/hosts"}]}, "spec.inputs[0].path", "together with upload"),
        ({"outputs": ["ok/*.txt", "a/../../etc/*"]}, "spec.outputs[1]", "cannot leave the job directory"),
        ({"outputs": ["/etc/passwd"]}, "spec.outputs[0]", "not an absolute path"),
        ({"partition": "a", "partitions": ["b"]}, "spec.partitions", "choose the partition one way"),
        ({"partition": "a,b"}, "spec.partition", "must be a Slurm name"),
        ({"array": "1-"}, "spec.array", "--array syntax"),
        ({"environment": [{"name": "1X", "value": "v"}]}, "spec.environment[0].name", "environment variable"),
        ({"environment": [{"name": "A"}, {"name": "A"}]}, "spec.environment[1].name", "Duplicate value"),
        ({"script": ""}, "spec.script", "at least 1"),
    ],
)
def test_validation_names_the_field(api: httpx.Client, spec: dict[str, Any], field: str, text: str) -> None:
    found = causes(api.post(SJ, json=slurmjob("invalid", **spec)))
    assert field in found, found
    assert text in found[field], found[field]


def test_validation_errors_through_kubectl(kubectl_132: Path, server: ServerProcess) -> None:
    manifest = yaml.safe_dump(slurmjob("badmem", resources={"memoryPerNode": "4GB"}))
    err = kubectl_fails(kubectl_132, server.kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert (
        'The SlurmJob "badmem" is invalid: spec.resources.memoryPerNode: Invalid value: "4GB": quantities '
        "must match the regular expression"
    ) in err
    manifest = yaml.safe_dump(slurmjob("badtime", resources={"timeLimit": "soon"}))
    err = kubectl_fails(kubectl_132, server.kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert 'spec.resources.timeLimit: Invalid value: "soon": a time limit is a number of minutes' in err
    manifest = yaml.safe_dump(slurmjob("escape", outputs=["../secrets"]))
    err = kubectl_fails(kubectl_132, server.kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert "spec.outputs[0]: Invalid value: \"../secrets\": must not contain '..'" in err
    manifest = yaml.safe_dump(slurmjob("typo", partiton="debug"))
    err = kubectl_fails(
        kubectl_132, server.kubeconfig, "create", "--validate=strict", "-f", "-", stdin=manifest
    )
    assert (
        'SlurmJob in version "v1" cannot be handled as a SlurmJob: strict decoding error: unknown field '
        '"spec.partiton"'
    ) in err


def test_quantities_kubernetes_writes_are_accepted(api: httpx.Client) -> None:
    for i, memory in enumerate(("4G", "4Gi", "4096Mi", 4294967296, "1.5Gi", "4e9")):
        ok(api.post(SJ, json=slurmjob(f"mem{i}", resources={"memoryPerNode": memory})), 201)
    for i, limit in enumerate((30, "30", "30:00", "1:00:00", "2-0", "2-12:30", "2h", "UNLIMITED")):
        ok(api.post(SJ, json=slurmjob(f"time{i}", partition="long", resources={"timeLimit": limit})), 201)


def test_spec_is_fixed_but_suspend_and_cancel(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    ok(api.post(SJ, json=slurmjob("fixed", partition="debug", suspend=True)), 201)
    bad = api.patch(f"{SJ}/fixed", json={"spec": {"partition": "long", "script": "x"}}, headers=MERGE)
    assert causes(bad) == {"spec.partition": "field is immutable", "spec.script": "field is immutable"}
    released = ok(api.patch(f"{SJ}/fixed", json={"spec": {"suspend": False}}, headers=MERGE))
    assert released["spec"]["suspend"] is False and released["metadata"]["generation"] == 2
    ok(api.patch(f"{SJ}/fixed", json={"spec": {"ttlSecondsAfterFinished": 60}}, headers=MERGE))
    kubectl(
        kubectl_132,
        server.kubeconfig,
        "patch",
        V1_FULL,
        "fixed",
        "--type=merge",
        "-p",
        '{"spec":{"cancel":true}}',
    )
    err = kubectl_fails(
        kubectl_132,
        server.kubeconfig,
        "patch",
        V1_FULL,
        "fixed",
        "--type=merge",
        "-p",
        '{"spec":{"cancel":false}}',
    )
    assert "spec.cancel: Invalid value: false: a cancelled job stays cancelled" in err
    assert ok(api.get(f"{SJ}/fixed"))["spec"]["cancel"] is True


# ---- users ----------------------------------------------------------------------------------------


def test_users_see_only_their_own_jobs(
    kubectl_132: Path,
    kubeconfigs: dict[str, Path],
    clients: dict[str, httpx.Client],
    accounts: dict[str, int],
) -> None:
    alice, bob = clients[ALICE], clients[BOB]
    kubectl(kubectl_132, kubeconfigs[ALICE], "apply", "-f", "-", stdin=yaml.safe_dump(slurmjob("alice-job")))
    created = ok(bob.post(SJ, json=slurmjob("bob-job")), 201)
    assert created["metadata"]["labels"]["slurmlink.io/owner-uid"] == str(accounts[BOB])
    names = kubectl(kubectl_132, kubeconfigs[ALICE], "get", V1_FULL, "-o", "name").split()
    assert names == ["slurmjob.slurmlink.io/alice-job"]
    assert [i["metadata"]["name"] for i in ok(bob.get(SJ))["items"]] == ["bob-job"]
    err = kubectl_fails(kubectl_132, kubeconfigs[BOB], "get", V1_FULL, "alice-job")
    assert (
        'slurmjobs.slurmlink.io "alice-job" is forbidden: User "slurmlink-bob" cannot get resource '
        '"slurmjobs" in API group "slurmlink.io" in the namespace "default"'
    ) in err
    assert bob.patch(f"{SJ}/alice-job", json={"spec": {"cancel": True}}, headers=MERGE).status_code == 403
    assert bob.delete(f"{SJ}/alice-job").status_code == 403
    # Alice cancels her own job, but cannot report on it.
    ok(alice.patch(f"{SJ}/alice-job", json={"spec": {"cancel": True}}, headers=MERGE))
    r = alice.patch(f"{SJ}/alice-job/status", json={"status": {"phase": "Succeeded"}}, headers=MERGE)
    assert r.status_code == 403, r.text
    assert r.json()["message"] == (
        'slurmjobs.slurmlink.io "alice-job" is forbidden: User "slurmlink-alice" cannot patch resource '
        '"slurmjobs/status" in API group "slurmlink.io" in the namespace "default"'
    )
    assert alice.get(f"{SJ}/alice-job/status").status_code == 200
    # The admin and a viewer see everyone's.
    everyone = {i["metadata"]["name"] for i in ok(clients["viewer"].get(SJ))["items"]}
    assert {"alice-job", "bob-job"} <= everyone
    assert alice.delete(f"{SJ}/alice-job").status_code == 200


def test_users_read_partitions_and_nodes_but_never_write_them(
    kubectl_132: Path, kubeconfigs: dict[str, Path], clients: dict[str, httpx.Client], api: httpx.Client
) -> None:
    ok(api.post(PARTITIONS, json=partition("shared", "shared", totalNodes=1)), 201)
    alice = clients[ALICE]
    assert "shared" in {p["metadata"]["name"] for p in ok(alice.get(PARTITIONS))["items"]}
    assert "slurm-minikube-shared" in {n["metadata"]["name"] for n in ok(alice.get(NODES))["items"]}
    err = kubectl_fails(
        kubectl_132, kubeconfigs[ALICE], "apply", "-f", "-", stdin=yaml.safe_dump(partition("mine", "mine"))
    )
    assert (
        'partitions.slurmlink.io is forbidden: User "slurmlink-alice" cannot create resource "partitions" '
        'in API group "slurmlink.io" at the cluster scope'
    ) in err
    assert (
        alice.patch(f"{PARTITIONS}/shared", json={"spec": {"totalNodes": 9}}, headers=MERGE).status_code
        == 403
    )
    r = alice.patch(f"{PARTITIONS}/shared/status", json={"status": {"state": "DOWN"}}, headers=MERGE)
    assert r.status_code == 403, r.text
    assert alice.delete(f"{PARTITIONS}/shared").status_code == 403
    assert clients["viewer"].post(PARTITIONS, json=partition("v", "v")).status_code == 403


# ---- Partition and Node ---------------------------------------------------------------------------


def test_partitions_print_limits_and_unlimited(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    rows = {
        r["NAME"]: r
        for r in table(kubectl(kubectl_132, server.kubeconfig, "get", "partitions", "debug", "gpu-short"))
    }
    assert list(rows["debug"]) == ["NAME", "STATE", "NODES", "CPUS/NODE", "MEM/NODE", "MAXTIME", "AGE"]
    assert (rows["debug"]["STATE"], rows["debug"]["NODES"], rows["debug"]["CPUS/NODE"]) == ("UP", "4", "2")
    assert (rows["debug"]["MEM/NODE"], rows["debug"]["MAXTIME"]) == ("7812Mi", "1:00:00")
    assert (rows["gpu-short"]["MEM/NODE"], rows["gpu-short"]["MAXTIME"]) == ("UNLIMITED", "UNLIMITED")
    stored = ok(api.get(f"{PARTITIONS}/gpu-short"))
    assert stored["spec"].get("maxTime") is None and stored["spec"].get("memoryPerNode") is None
    labels = ok(api.get(f"{PARTITIONS}/debug"))["metadata"]["labels"]
    assert labels == {
        "slurmlink.io/partition": "debug",
        "slurmlink.io/cluster": "minikube",
        "slurmlink.io/default": "true",
        "feature.slurmlink.io/avx2": "true",
        "feature.slurmlink.io/cuda": "10",
        "feature.slurmlink.io/singularity_3.2.0": "true",
        "gres.slurmlink.io/gpu": "true",
    }
    selected = kubectl(
        kubectl_132,
        server.kubeconfig,
        "get",
        "partitions",
        "-l",
        "feature.slurmlink.io/cuda=10",
        "-o",
        "name",
    )
    assert selected.split() == ["partition.slurmlink.io/debug"]


def test_partition_labels_follow_the_spec(api: httpx.Client) -> None:
    body = partition("relabel", "relabel", features=["old"])
    body["metadata"]["labels"] = {"site/rack": "r1", "feature.slurmlink.io/forged": "true"}
    labels = ok(api.post(PARTITIONS, json=body), 201)["metadata"]["labels"]
    assert labels["site/rack"] == "r1" and "feature.slurmlink.io/forged" not in labels
    patched = ok(api.patch(f"{PARTITIONS}/relabel", json={"spec": {"features": ["new"]}}, headers=MERGE))
    assert "feature.slurmlink.io/new" in patched["metadata"]["labels"]
    assert "feature.slurmlink.io/old" not in patched["metadata"]["labels"]


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"maxTime": 0}, "spec.maxTime", "null, never 0, means unlimited"),
        ({"cpusPerNode": 0}, "spec.cpusPerNode", "never 0"),
        ({"maxNodesPerJob": 0}, "spec.maxNodesPerJob", "never 0"),
        ({"memoryPerNode": 0}, "spec.memoryPerNode", "greater than zero"),
        ({"memoryPerNode": "NaN"}, "spec.memoryPerNode", "quantities must match"),
        ({"totalNodes": -1}, "spec.totalNodes", "greater than or equal to 0"),
        ({"extraFeatures": [{"name": "bad name"}]}, "spec.extraFeatures[0]", "label key"),
    ],
)
def test_partition_validation(api: httpx.Client, spec: dict[str, Any], field: str, text: str) -> None:
    found = causes(api.post(PARTITIONS, json=partition("badpart", "badpart", **spec)))
    assert text in found[field], found


def test_partition_names_are_dns_labels(api: httpx.Client) -> None:
    found = causes(api.post(PARTITIONS, json=partition("gpu.short", "GPU_Short")))
    assert "lowercase RFC 1123 label" in found["metadata.name"]
    body = partition("nocluster", "x")
    del body["spec"]["cluster"]
    assert causes(api.post(PARTITIONS, json=body))["spec.cluster"] == "Required value"


def test_nodes_show_partitions_as_the_seed_did(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    rows = {r["NAME"]: r for r in table(kubectl(kubectl_132, server.kubeconfig, "get", "nodes"))}
    assert list(rows["slurm-minikube-cpu"]) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows["slurm-minikube-cpu"]["STATUS"] == "Ready" and rows["slurm-minikube-cpu"]["ROLES"] == "agent"
    assert rows["slurm-minikube-gpu-short"]["STATUS"].startswith("NotReady")
    cpu = ok(api.get(f"{NODES}/slurm-minikube-cpu"))
    assert {
        k: v for k, v in cpu["metadata"]["labels"].items() if not k.startswith(("feature.", "slurmlink.io/"))
    } == {
        "type": "virtual-kubelet",
        "kubernetes.io/role": "agent",
        "kubernetes.io/hostname": "slurm-minikube-cpu",
        "kubernetes.io/os": "linux",
        "wlm.sylabs.io/partition": "cpu",
        "wlm.sylabs.io/nodes": "3",
        "wlm.sylabs.io/wall-time": "36000",
        "wlm.sylabs.io/cpu-per-node": "4",
        "wlm.sylabs.io/mem-per-node": "8192",
    }
    assert cpu["status"]["capacity"] == {"pods": "0", "cpu": "4", "memory": "8192Mi"}
    unlimited = ok(api.get(f"{NODES}/slurm-minikube-gpu-short"))["metadata"]["labels"]
    assert unlimited["wlm.sylabs.io/partition"] == "GPU_Short"
    assert unlimited["wlm.sylabs.io/cpu-per-node"] == "2"
    assert not {"wlm.sylabs.io/wall-time", "wlm.sylabs.io/mem-per-node"} & set(unlimited)
    long = ok(api.get(f"{NODES}/slurm-minikube-long"))["metadata"]["labels"]
    assert long["wlm.sylabs.io/containers"] == "singularity"  # the admin's label on the Partition
    picked = kubectl(
        kubectl_132, server.kubeconfig, "get", "nodes", "-l", "wlm.sylabs.io/wall-time", "-o", "name"
    )
    assert (
        "node/slurm-minikube-gpu-short" not in picked.split() and "node/slurm-minikube-cpu" in picked.split()
    )
    r = api.delete(f"{NODES}/slurm-minikube-cpu")
    assert r.status_code == 405 and "kubectl get partitions" in r.json()["message"]
    assert api.get(f"{NODES}/slurm-minikube-nothing").status_code == 404


def test_get_with_kubectl_120(kubectl_120: Path, server: ServerProcess, api: httpx.Client) -> None:
    ok(api.post(SJ, json=slurmjob("old-kubectl", partition="debug")), 201)
    rows = table(kubectl(kubectl_120, server.kubeconfig, "get", "slurmjobs.slurmlink.io", "old-kubectl"))
    assert rows[0]["NAME"] == "old-kubectl"
    assert "slurm-minikube-" in kubectl(kubectl_120, server.kubeconfig, "get", "nodes")


# ---- fitting the published partitions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        (
            {"partition": "debug", "resources": {"nodes": 3}},
            "spec.resources.nodes",
            'partition "debug" allows at most 2 nodes per job',
        ),
        (
            {"partition": "long", "resources": {"nodes": 5}},
            "spec.resources.nodes",
            'partition "long" has only 4 nodes',
        ),
        (
            {"partition": "debug", "resources": {"timeLimit": "2:00:00"}},
            "spec.resources.timeLimit",
            "allows at most 1:00:00",
        ),
        (
            {"partition": "debug", "resources": {"memoryPerNode": "16Gi"}},
            "spec.resources.memoryPerNode",
            "has 7812Mi of memory per node",
        ),
        (
            {"partition": "debug", "resources": {"memoryPerCPU": "4Gi", "cpusPerTask": 2}},
            "spec.resources.memoryPerCPU",
            "7812Mi",
        ),
        (
            {"partition": "debug", "resources": {"cpusPerTask": 3}},
            "spec.resources.cpusPerTask",
            "has 2 CPUs per node",
        ),
        (
            {"partition": "debug", "resources": {"constraints": "avx2&ib"}},
            "spec.resources.constraints",
            "has no node with ib",
        ),
        ({"partition": "debug", "account": "chemistry"}, "spec.account", "(allowed: physics)"),
        ({"partition": "nope"}, "spec.partition", "no such partition"),
        ({"partitions": ["long", "nope"]}, "spec.partitions[1]", "no such partition"),
        (
            {"partitionSelector": {"matchLabels": {"feature.slurmlink.io/quantum": "true"}}},
            "spec.partitionSelector",
            "no Partition matches",
        ),
        ({"resources": {"nodes": 3}}, "spec.resources.nodes", 'partition "debug"'),  # the default partition
    ],
)
def test_jobs_that_fit_no_partition_are_refused(
    api: httpx.Client, spec: dict[str, Any], field: str, text: str
) -> None:
    found = causes(api.post(SJ, json=slurmjob("misfit", **spec)))
    assert text in found[field], found


def test_jobs_that_fit_one_partition_are_taken(api: httpx.Client) -> None:
    fits = [
        {"partitions": ["debug", "long"], "resources": {"timeLimit": "2:00:00", "nodes": 4}},
        {
            "partitionSelector": {"matchLabels": {"feature.slurmlink.io/ib": "true"}},
            "resources": {"nodes": 4},
        },
        {"partition": "GPU_Short", "resources": {"timeLimit": "1000-0", "memoryPerNode": "1Ti", "nodes": 4}},
        {
            "partition": "debug",
            "account": "physics",
            "resources": {"memoryPerNode": "4G", "constraints": "a|b"},
        },
    ]
    for i, spec in enumerate(fits):
        ok(api.post(SJ, json=slurmjob(f"fits{i}", **spec)), 201)


def test_seed_jobs_must_fit_the_node_they_select(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    body = yaml.safe_load((DATA / "hello.yaml").read_text())

    def seed(name: str, lines: str, selector: dict[str, Any] | None = None) -> httpx.Response:
        job = copy.deepcopy(body)
        job["metadata"]["name"] = name
        job["spec"]["batch"] = f"#!/bin/sh\n{lines}echo hi\n"
        if selector is not None:
            job["spec"]["nodeSelector"] = selector
        return api.post(WLM, json=job)

    assert seed("mem4g", "#SBATCH --mem=4G\n#SBATCH -N 3\n#SBATCH --time=10:00:00\n").status_code == 201
    found = causes(seed("mem16g", "#SBATCH --mem=16G\n"))
    assert found == {"spec.batch": 'Invalid value: "16384Mi": partition "cpu" has 8192Mi of memory per node'}
    assert "has only 3 nodes" in causes(seed("n4", "#SBATCH --nodes=4-8\n"))["spec.batch"]
    assert "allows at most 10:00:00" in causes(seed("t11", "#SBATCH -t 11:00:00\n"))["spec.batch"]
    assert "has 4 CPUs per node" in causes(seed("c8", "#SBATCH -c 4 --ntasks-per-node=2\n"))["spec.batch"]
    # Lines after the first command are the script's, not options (as sbatch reads them).
    assert seed("late", "echo start\n#SBATCH --nodes=99\n").status_code == 201
    manifest = yaml.safe_dump(
        {
            **body,
            "metadata": {"name": "nowhere"},
            "spec": {**body["spec"], "nodeSelector": {"kubernetes.io/hostname": "slurm-minikube-gpu"}},
        }
    )
    err = kubectl_fails(kubectl_132, server.kubeconfig, "apply", "-f", "-", stdin=manifest)
    assert "spec.nodeSelector: Invalid value" in err and "no node matches this selector" in err
    # An unlimited partition takes any time and memory.
    anywhere = {"wlm.sylabs.io/partition": "GPU_Short"}
    assert seed("unlimited", "#SBATCH --time=UNLIMITED\n#SBATCH --mem=1T\n", anywhere).status_code == 201


# ---- wlm.sylabs.io/v1alpha1 SlurmJob --------------------------------------------------------------


@pytest.mark.parametrize("example", ["prepare-and-results", "hello", "batch-example", "cow"])
def test_seed_examples_apply_unchanged(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client, example: str
) -> None:
    path = DATA / f"{example}.yaml"
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    out = kubectl(kubectl_132, server.kubeconfig, "apply", "-f", str(path))
    assert out.strip() == f"slurmjob.wlm.sylabs.io/{name} created"
    stored = ok(api.get(f"{WLM}/{name}"))
    assert stored["spec"] == manifest["spec"]  # nothing pruned, nothing added
    again = kubectl(kubectl_132, server.kubeconfig, "apply", "-f", str(path))
    assert again.strip() == f"slurmjob.wlm.sylabs.io/{name} unchanged"


def test_seed_printer_columns_and_status(kubectl_132: Path, server: ServerProcess, api: httpx.Client) -> None:
    kubectl(kubectl_132, server.kubeconfig, "apply", "-f", str(DATA / "hello.yaml"))
    ok(
        api.patch(
            f"{WLM}/hello/status", json={"status": {"status": "Succeeded", "jobId": "7"}}, headers=MERGE
        )
    )
    rows = {
        r["NAME"]: r for r in table(kubectl(kubectl_132, server.kubeconfig, "get", "slurmjobs.wlm.sylabs.io"))
    }
    assert list(rows["hello"]) == ["NAME", "AGE", "STATUS"]
    assert rows["hello"]["STATUS"] == "Succeeded"
    wide = table(
        kubectl(kubectl_132, server.kubeconfig, "get", "slurmjobs.wlm.sylabs.io", "hello", "-o", "wide")
    )
    assert wide[0]["JOBID"] == "7"
    described = kubectl(kubectl_132, server.kubeconfig, "describe", "slurmjobs.wlm.sylabs.io", "hello")
    assert "Batch:" in described and "Status:  Succeeded" in described
    # The seed's CRD requires status.status in every status written.
    bad = api.put(f"{WLM}/hello/status", json={**ok(api.get(f"{WLM}/hello")), "status": {"jobId": "8"}})
    assert causes(bad) == {"status.status": "Required value"}


def test_seed_nfs_volume_is_refused(kubectl_132: Path, server: ServerProcess, api: httpx.Client) -> None:
    err = kubectl_fails(kubectl_132, server.kubeconfig, "apply", "-f", str(DATA / "fox.yaml"))
    assert (
        'The SlurmJob "fox" is invalid: spec.results.mount.nfs: Unsupported value: "nfs": supported values: '
        '"hostPath"'
    ) in err
    assert "use hostPath" in err
    assert api.get(f"{WLM}/fox").status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        (
            {"prepare": {"to": ".", "mount": {"name": "in", "emptyDir": {}}}},
            "spec.prepare.mount.emptyDir",
            "Unsupported value",
        ),
        (
            {"prepare": {"to": ".", "mount": {"name": "in"}}},
            "spec.prepare.mount",
            "must specify a volume type",
        ),
        (
            {"prepare": {"to": ".", "mount": {"hostPath": {"path": "/d"}}}},
            "spec.prepare.mount.name",
            "Required",
        ),
        (
            {"prepare": {"to": "/abs", "mount": {"name": "in", "hostPath": {"path": "/d"}}}},
            "spec.prepare.to",
            "absolute",
        ),
        (
            {"prepare": {"mount": {"name": "in", "hostPath": {"path": "/d"}}}},
            "spec.prepare.to",
            "Required value",
        ),
        (
            {"results": {"from": "../up", "mount": {"name": "o", "hostPath": {"path": "/d"}}}},
            "spec.results.from",
            "'..'",
        ),
        (
            {"results": {"from": "x", "mount": {"name": "o", "hostPath": {"path": "rel"}}}},
            "spec.results.mount.hostPath.path",
            "absolute",
        ),
        (
            {"results": {"from": "x", "mount": {"name": "o", "hostPath": {"path": "/d", "type": "Socket"}}}},
            "spec.results.mount.hostPath.type",
            "Unsupported value",
        ),
        ({"nodeSelector": {"a": {"b": "c"}}}, "spec.nodeSelector.a", "must be a string"),
        ({"batch": ""}, "spec.batch", "at least 1"),
    ],
)
def test_seed_validation(api: httpx.Client, change: dict[str, Any], field: str, text: str) -> None:
    body = yaml.safe_load((DATA / "hello.yaml").read_text())
    body["metadata"]["name"] = "seed-invalid"
    body["spec"].update(change)
    found = causes(api.post(WLM, json=body))
    assert text in found[field], found


def test_seed_spec_never_changes(api: httpx.Client) -> None:
    body = yaml.safe_load((DATA / "cow.yaml").read_text())
    body["metadata"]["name"] = "cow-fixed"
    ok(api.post(WLM, json=body), 201)
    changed = copy.deepcopy(body["spec"])
    changed["batch"] += "echo more\n"
    bad = api.patch(f"{WLM}/cow-fixed", json={"spec": {"batch": changed["batch"]}}, headers=MERGE)
    assert "field is immutable" in causes(bad)["spec.batch"]


def test_seed_jobs_are_their_owners(
    kubeconfigs: dict[str, Path], kubectl_132: Path, clients: dict[str, httpx.Client]
) -> None:
    body = yaml.safe_load((DATA / "prepare-and-results.yaml").read_text())
    body["metadata"]["name"] = "alice-seed"
    kubectl(kubectl_132, kubeconfigs[ALICE], "apply", "-f", "-", stdin=json.dumps(body))
    assert clients[BOB].get(f"{WLM}/alice-seed").status_code == 403
    assert [i["metadata"]["name"] for i in ok(clients[ALICE].get(WLM))["items"]] == ["alice-seed"]
    r = clients[ALICE].patch(
        f"{WLM}/alice-seed/status", json={"status": {"status": "Succeeded"}}, headers=MERGE
    )
    assert r.status_code == 403, r.text
