"""The DWS storage kinds (DirectiveBreakdown, Servers, Storage, ClientMount, PersistentStorageInstance,
SystemConfiguration) and slurmlink's StoragePool and StorageProfile, through a real server and kubectl.

Discovery and ``kubectl api-resources``; upstream's printer columns at v1alpha2 and v1alpha7;
create/get/patch and ``/status`` round trips at both versions with the conversions where the shapes
differ; schema checks, pruning and ``fieldValidation=Strict``; the default StorageProfile rule; and a
Workflow's deletion taking its DirectiveBreakdown, Servers and ClientMounts with it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slurmlink.resources.dws import ownership
from support.dws_objects import (
    CLIENT_MOUNT,
    DIRECTIVE_BREAKDOWN,
    DWS_KINDS,
    GIB,
    PERSISTENT_STORAGE_INSTANCE,
    SERVERS,
    STORAGE,
    Example,
    G,
)
from support.kubectl import run_kubectl
from support.server import ServerProcess
from support.waiting import wait_for

MERGE = {"Content-Type": "application/merge-patch+json"}
TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
VERSIONS = ("v1alpha2", "v1alpha7")
POOLS = "/apis/slurmlink.io/v1/storagepools"
PROFILES = "/apis/slurmlink.io/v1/storageprofiles"
_ids = itertools.count(1)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": "c1"}}).status_code == 201
        yield client


def new_name(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def ok(response: httpx.Response, code: int = 200) -> dict[str, Any]:
    assert response.status_code == code, response.text
    return dict(response.json())


def status_for(example: Example, version: str) -> dict[str, Any]:
    if version == "v1alpha2" and example.status_v1alpha2 is not None:
        return copy.deepcopy(example.status_v1alpha2)
    return copy.deepcopy(example.status)


def read_back(example: Example, written: str, read: str) -> dict[str, Any]:
    """The status written at ``written``, read at ``read``."""
    status = status_for(example, read)
    if example is SERVERS and (written, read) == ("v1alpha2", "v1alpha7"):
        status["allocationSets"][0]["storage"]["n1"]["ready"] = False  # v1alpha2 cannot say it
    return status


def kubectl(binary: Path, server: ServerProcess, *args: str, stdin: str | None = None) -> str:
    r = run_kubectl(binary, server.kubeconfig, *args, input=stdin)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


def table_rows(text: str) -> list[dict[str, str]]:
    """``kubectl get`` output as one dict per row, cut at the header's column starts (cells may be empty)."""
    lines = text.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cuts = [*starts[1:], len(line) + 1]
        rows.append({n: line[a:b].strip() for n, a, b in zip(names, starts, cuts, strict=True)})
    return rows


# ---- discovery ----------------------------------------------------------------------------------


def test_discovery_lists_the_kinds_with_status(api: httpx.Client) -> None:
    for version in VERSIONS:
        resources = {r["name"]: r for r in ok(api.get(f"/apis/{G}/{version}"))["resources"]}
        for example in DWS_KINDS:
            entry = resources[example.plural]
            assert entry["kind"] == example.kind and entry["namespaced"] is True
            assert "shortNames" not in entry  # upstream declares none
            assert f"{example.plural}/status" in resources
    slurmlink = {r["name"]: r for r in ok(api.get("/apis/slurmlink.io/v1"))["resources"]}
    assert slurmlink["storagepools"]["namespaced"] is False
    assert slurmlink["storagepools"]["shortNames"] == ["pool"]
    assert slurmlink["storageprofiles"]["shortNames"] == ["profile"]
    assert "storagepools/status" in slurmlink and "storageprofiles/status" not in slurmlink


@pytest.mark.parametrize("which", ["kubectl_132", "kubectl_120"])
def test_kubectl_api_resources(which: str, request: pytest.FixtureRequest, server: ServerProcess) -> None:
    binary: Path = request.getfixturevalue(which)
    lines = kubectl(binary, server, "api-resources", f"--api-group={G}").splitlines()
    assert lines[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    for example in DWS_KINDS:
        assert rows[example.plural] == [f"{G}/v1alpha7", "true", example.kind]
    lines = kubectl(binary, server, "api-resources", "--api-group=slurmlink.io").splitlines()
    assert sorted(line.split() for line in lines[1:]) == [
        ["datamovements", "dm", "slurmlink.io/v1", "true", "DataMovement"],
        ["partitions", "part", "slurmlink.io/v1", "false", "Partition"],
        ["slurmjobs", "sj", "slurmlink.io/v1", "true", "SlurmJob"],
        ["storageallocations", "salloc", "slurmlink.io/v1", "true", "StorageAllocation"],
        ["storagepools", "pool", "slurmlink.io/v1", "false", "StoragePool"],
        ["storageprofiles", "profile", "slurmlink.io/v1", "false", "StorageProfile"],
    ]


# ---- round trips at both versions ----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("example", DWS_KINDS, ids=lambda e: e.kind)
def test_create_get_patch_and_status_round_trip(api: httpx.Client, example: Example, version: str) -> None:
    name = new_name(example.plural[:6])
    body = example.body(version, name)
    # A create cannot set status when /status is a subresource (as the API server drops it).
    created = ok(api.post(example.path(version), json={**body, "status": status_for(example, version)}), 201)
    assert created["apiVersion"] == f"{G}/{version}"
    assert "status" not in created
    for key, value in example.spec.items():
        assert created["spec"][key] == value
    patched = ok(api.patch(example.path(version, name), json={"spec": example.spec_patch}, headers=MERGE))
    assert patched["metadata"]["generation"] == 2
    for key, value in example.spec_patch.items():
        assert patched["spec"][key] == value
    # The main resource ignores status; /status takes it and nothing else.
    ignored = ok(
        api.patch(example.path(version, name), json={"status": status_for(example, version)}, headers=MERGE)
    )
    assert "status" not in ignored
    wrote = ok(
        api.patch(
            example.path(version, name, "status"),
            json={"status": status_for(example, version), "spec": {"bogus": "ignored"}},
            headers=MERGE,
        )
    )
    for key, value in status_for(example, version).items():
        assert wrote["status"][key] == value, key
    for other in VERSIONS:
        got = ok(api.get(example.path(other, name)))
        assert got["apiVersion"] == f"{G}/{other}"
        expected = read_back(example, version, other)
        assert {k: got["status"][k] for k in expected} == expected
        assert got["metadata"]["resourceVersion"] == wrote["metadata"]["resourceVersion"]
    ok(api.delete(example.path(version, name)))


def test_directivebreakdown_requires_is_required_daemons_in_v1alpha2(api: httpx.Client) -> None:
    ex = DIRECTIVE_BREAKDOWN
    name = new_name("dbd")
    ok(api.post(ex.path("v1alpha2"), json=ex.body("v1alpha2", name)), 201)
    status = {"ready": False, "requiredDaemons": ["a", "b"]}
    ok(
        api.put(
            ex.path("v1alpha2", name, "status"),
            json={**ok(api.get(ex.path("v1alpha2", name))), "status": status},
        )
    )
    assert ok(api.get(ex.path("v1alpha7", name)))["status"] == {"ready": False, "requires": ["a", "b"]}
    assert ok(api.get(ex.path("v1alpha2", name)))["status"] == status
    # A v1alpha7 field sent at v1alpha2 is not part of that version: pruned, with a warning.
    r = api.patch(ex.path("v1alpha2", name, "status"), json={"status": {"requires": ["x"]}}, headers=MERGE)
    assert ok(r)["status"]["requiredDaemons"] == ["a", "b"]


def test_servers_ready_survives_a_v1alpha2_status_write(api: httpx.Client) -> None:
    ex = SERVERS
    name = new_name("srv")
    ok(api.post(ex.path("v1alpha7"), json=ex.body("v1alpha7", name)), 201)
    ok(api.patch(ex.path("v1alpha7", name, "status"), json={"status": ex.status}, headers=MERGE))
    # A v1alpha2 writer cannot say "ready": the stored value is kept, and a new entry gets false.
    old = ok(api.get(ex.path("v1alpha2", name)))
    assert old["status"]["allocationSets"][0]["storage"] == {"n1": {"allocationSize": GIB}}
    old["status"]["allocationSets"][0]["storage"]["n2"] = {"allocationSize": 2 * GIB}
    old["status"]["lastUpdate"] = "2026-01-02T03:04:06.000000Z"
    ok(api.put(ex.path("v1alpha2", name, "status"), json=old))
    storage = ok(api.get(ex.path("v1alpha7", name)))["status"]["allocationSets"][0]["storage"]
    assert storage == {
        "n1": {"allocationSize": GIB, "ready": True},
        "n2": {"allocationSize": 2 * GIB, "ready": False},
    }


# ---- schema: defaults, required fields, enums, pruning ---------------------------------------------


def test_storage_defaults_and_required_spec(api: httpx.Client) -> None:
    name = new_name("st")
    created = ok(api.post(STORAGE.path("v1alpha7"), json={"metadata": {"name": name}, "spec": {}}), 201)
    assert created["spec"] == {"state": "Enabled", "mode": "Live"}
    wrote = ok(
        api.patch(
            STORAGE.path("v1alpha7", name, "status"), json={"status": {"status": "Starting"}}, headers=MERGE
        )
    )
    assert wrote["status"] == {"status": "Starting", "capacity": 0}
    r = api.post(STORAGE.path("v1alpha7"), json={"metadata": {"name": new_name("st")}})
    assert r.status_code == 422 and r.json()["details"]["causes"][0] == {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec",
    }, r.text
    r = api.post(
        STORAGE.path("v1alpha7"), json={"metadata": {"name": new_name("st")}, "spec": {"state": "Off"}}
    )
    assert r.status_code == 422, r.text
    assert (
        'spec.state: Unsupported value: "Off": supported values: "Enabled", "Disabled"' in r.json()["message"]
    )


@pytest.mark.parametrize(
    ("example", "spec", "expected"),
    [
        (CLIENT_MOUNT, {"desiredState": "mount"}, 'spec.desiredState: Unsupported value: "mount"'),
        (
            CLIENT_MOUNT,
            {"mounts": []},
            "spec.mounts: Invalid value: 0: spec.mounts in body should have at least 1 items",
        ),
        (DIRECTIVE_BREAKDOWN, {"userID": -1}, "spec.userID: Invalid value: -1"),
        (DIRECTIVE_BREAKDOWN, {"directive": None}, "spec.directive: Required value"),
        (PERSISTENT_STORAGE_INSTANCE, {"fsType": "zfs"}, 'spec.fsType: Unsupported value: "zfs"'),
        (
            SERVERS,
            {"allocationSets": [{"label": "xfs", "allocationSize": 0, "storage": []}]},
            "allocationSize",
        ),
    ],
    ids=["enum", "min-items", "uint32", "required", "fs-type", "minimum"],
)
def test_schema_violations_are_invalid(
    api: httpx.Client, example: Example, spec: dict[str, Any], expected: str
) -> None:
    body = example.body("v1alpha7", new_name("bad"))
    body["spec"] = {k: v for k, v in {**example.spec, **spec}.items() if v is not None}
    r = api.post(example.path("v1alpha7"), json=body)
    assert r.status_code == 422, r.text
    assert f'{example.kind}.{G} "{body["metadata"]["name"]}" is invalid' in r.json()["message"]
    assert expected in r.json()["message"]


def test_status_schema_is_checked_on_the_status_subresource(api: httpx.Client) -> None:
    name = new_name("cm")
    ok(api.post(CLIENT_MOUNT.path("v1alpha7"), json=CLIENT_MOUNT.body("v1alpha7", name)), 201)
    r = api.patch(
        CLIENT_MOUNT.path("v1alpha7", name, "status"),
        json={"status": {"allReady": True, "mounts": [{"state": "mounted"}]}},
        headers=MERGE,
    )
    assert r.status_code == 422 and "status.mounts[0].ready: Required value" in r.json()["message"], r.text
    r = api.patch(
        CLIENT_MOUNT.path("v1alpha7", name, "status"),
        json={"status": {"allReady": False, "mounts": [], "error": {"severity": "Bad", "type": "User"}}},
        headers=MERGE,
    )
    assert r.status_code == 422, r.text
    assert "status.error.debugMessage: Required value" in r.json()["message"]
    assert 'status.error.severity: Unsupported value: "Bad"' in r.json()["message"]


@pytest.mark.parametrize("example", DWS_KINDS, ids=lambda e: e.kind)
def test_unknown_fields_are_pruned_or_refused(api: httpx.Client, example: Example) -> None:
    name = new_name("prune")
    body = example.body("v1alpha2", name)
    body["spec"] = {**body["spec"], "bogus": 1}
    r = api.post(example.path("v1alpha2"), params={"fieldValidation": "Strict"}, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == (
        f'{example.kind} in version "v1alpha2" cannot be handled as a {example.kind}: strict decoding error: '
        'unknown field "spec.bogus"'
    )
    r = api.post(example.path("v1alpha2"), json=body)
    assert r.status_code == 201 and "bogus" not in r.json()["spec"], r.text
    assert r.headers.get_list("warning") == ['299 - "unknown field \\"spec.bogus\\""']


def test_kubectl_strict_validation_of_a_storage(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client
) -> None:
    manifest = f"""apiVersion: {G}/v1alpha2
kind: Storage
metadata: {{name: strict-n9, namespace: default}}
spec: {{state: Enabled, typo: 1}}
"""
    r = run_kubectl(kubectl_132, server.kubeconfig, "create", "-f", "-", input=manifest)
    assert r.returncode != 0
    assert 'strict decoding error: unknown field "spec.typo"' in r.stderr
    assert api.get(STORAGE.path("v1alpha7", "strict-n9")).status_code == 404


# ---- printer columns --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("example", DWS_KINDS, ids=lambda e: e.kind)
def test_kubectl_get_shows_upstreams_columns(
    kubectl_132: Path, server: ServerProcess, api: httpx.Client, example: Example, version: str
) -> None:
    name = new_name("col")
    ok(api.post(example.path(version), json=example.body(version, name)), 201)
    ok(
        api.patch(
            example.path(version, name, "status"),
            json={"status": status_for(example, version)},
            headers=MERGE,
        )
    )
    resource = f"{example.plural}.{version}.{G}"
    out = kubectl(kubectl_132, server, "get", resource, name, "-n", str(example.namespace)).splitlines()
    assert out[0].split() == ["NAME", *(c.upper() for c in example.columns)]  # kubectl upper-cases
    cells = table_rows("\n".join(out))[0]
    if "READY" in cells:
        assert cells["READY"] == "true"
    if "DESIREDSTATE" in cells:
        assert cells["DESIREDSTATE"] == "mounted"
    if example is STORAGE:
        assert (cells["STATE"], cells["STATUS"], cells["MODE"]) == ("Enabled", "Ready", "Live")
    if "ERROR" in cells:
        assert cells["ERROR"] == ""
    ok(
        api.patch(
            example.path(version, name, "status"),
            json={"status": {"error": {"severity": "Major", "type": "User", "debugMessage": "d"}}},
            headers=MERGE,
        )
    )
    out = kubectl(kubectl_132, server, "get", resource, name, "-n", str(example.namespace)).splitlines()
    if "ERROR" in out[0].split():
        assert table_rows("\n".join(out))[0]["ERROR"] == "Major"


def test_field_selectors(api: httpx.Client) -> None:
    names = {}
    for node in ("c1", "c9"):
        name = new_name("fs")
        body = CLIENT_MOUNT.body("v1alpha7", name)
        body["spec"] = {**body["spec"], "node": node}
        ok(api.post(CLIENT_MOUNT.path("v1alpha7"), json=body), 201)
        names[node] = name
    got = ok(api.get(f"/apis/{G}/v1alpha7/clientmounts", params={"fieldSelector": "spec.node=c9"}))
    assert {i["metadata"]["name"] for i in got["items"]} == {names["c9"]}
    r = api.get(f"/apis/{G}/v1alpha7/storages", params={"fieldSelector": "spec.bogus=1"})
    assert r.status_code == 400, r.text


# ---- StoragePool and StorageProfile -------------------------------------------------------------------


def pool(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StoragePool",
        "metadata": {"name": name},
        "spec": {"fileSystemTypes": ["xfs"], "nodes": ["n1", "n2", "n3"], **spec},
    }


def test_storagepool_defaults_and_validation(api: httpx.Client) -> None:
    created = ok(api.post(POOLS, json=pool("p-defaults")), 201)
    assert created["spec"]["granularity"] == "1GiB"
    assert created["spec"]["allocationStrategies"] == [
        "AllocatePerCompute",
        "AllocateAcrossServers",
        "AllocateSingleServer",
    ]
    assert "namespace" not in created["metadata"]
    r = api.post(POOLS, json=pool("p-bad", granularity="lots", fileSystemTypes=["xfs", "xfs"]))
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert "spec.granularity: Invalid value: \"lots\": 'lots' is not a size" in message
    assert 'spec.fileSystemTypes: Duplicate value: "xfs"' in message
    r = api.post(POOLS, json=pool("p-bad", fileSystemTypes=["ntfs"]))
    assert r.status_code == 422, r.text
    assert 'spec.fileSystemTypes[0]: Unsupported value: "ntfs"' in r.json()["message"]
    assert api.post(POOLS, json=pool("p.dot")).status_code == 422
    ok(api.post(POOLS, json=pool("p-int", granularity=4096)), 201)
    r = api.patch(
        f"{POOLS}/p-int/status", json={"status": {"totalGranules": 1, "freeGranules": 2}}, headers=MERGE
    )
    assert r.status_code == 422 and "must not exceed status.totalGranules (1)" in r.json()["message"]


@pytest.mark.parametrize("which", ["kubectl_132", "kubectl_120"])
def test_kubectl_get_storagepools_reads_like_scontrol_show_burst(
    which: str, request: pytest.FixtureRequest, server: ServerProcess, api: httpx.Client
) -> None:
    binary: Path = request.getfixturevalue(which)
    name = new_name("pool-")
    # Its status is the StoragePool controller's, from the pool's Storage objects: three nodes of
    # 100 GiB, one of them Offline (its capacity counts in TOTAL, not in FREE).
    nodes = [new_name("bb") for _ in range(3)]
    for node, state in zip(nodes, ("Ready", "Ready", "Offline"), strict=True):
        ok(api.post(STORAGE.path("v1alpha7"), json=STORAGE.body("v1alpha7", node)), 201)
        status = {"capacity": 100 * GIB, "status": state}
        ok(api.patch(STORAGE.path("v1alpha7", node, "status"), json={"status": status}, headers=MERGE))
    ok(
        api.post(
            POOLS,
            json=pool(
                name, fileSystemTypes=["raw", "dir"], granularity="256MiB", profile="fast", nodes=nodes
            ),
        ),
        201,
    )
    status = wait_for(
        lambda: (s := ok(api.get(f"{POOLS}/{name}")).get("status") or {}).get("freeBytes") == 200 * GIB and s,
        10,
        message="the pool's status",
    )
    assert (status["granularity"], status["totalGranules"], status["freeGranules"]) == (
        256 * 1024**2,
        1200,
        800,
    )
    assert [(n["name"], n["status"], n["freeGranules"]) for n in status["nodes"]] == [
        (nodes[0], "Ready", 400),
        (nodes[1], "Ready", 400),
        (nodes[2], "Offline", 0),
    ]
    out = kubectl(binary, server, "get", "storagepools", name).splitlines()
    assert out[0].split() == ["NAME", "TYPE", "GRANULARITY", "TOTAL", "FREE", "NODES", "AGE"]
    assert out[1].split()[:6] == [name, "raw,dir", "256MiB", "300GiB", "200GiB", "3"]
    wide = kubectl(binary, server, "get", "pool", name, "-o", "wide").splitlines()
    assert wide[0].split()[-2:] == ["STRATEGIES", "PROFILE"]
    assert wide[1].split()[-1] == "fast"
    # The main resource cannot change status; only /status can.
    ok(api.patch(f"{POOLS}/{name}", json={"status": {"freeBytes": 0}}, headers=MERGE))
    assert ok(api.get(f"{POOLS}/{name}"))["status"]["freeBytes"] == 200 * GIB


def profile(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "StorageProfile",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_storageprofile_one_default(kubectl_132: Path, server: ServerProcess, api: httpx.Client) -> None:
    first = profile(
        "site-default",
        default=True,
        xfs={"mkfsOptions": ["-m", "crc=1"], "mountOptions": ["noatime", "nodiratime"]},
        gluster={"volumeOptions": {"performance.cache-size": "256MB"}, "mountOptions": ["noatime"]},
        dir={"mountOptions": ["nosuid"]},
    )
    created = ok(api.post(PROFILES, json=first), 201)
    assert created["spec"]["xfs"]["mkfsOptions"] == ["-m", "crc=1"]
    assert ok(api.post(PROFILES, json=profile("plain")), 201)["spec"] == {"default": False}
    second = (
        "apiVersion: slurmlink.io/v1\nkind: StorageProfile\nmetadata: {name: other}\nspec: {default: true}\n"
    )
    r = run_kubectl(kubectl_132, server.kubeconfig, "create", "-f", "-", input=second)
    assert r.returncode != 0
    assert (
        'The StorageProfile "other" is invalid: spec.default: Invalid value: true: StorageProfile '
        '"site-default" is already the default; at most one profile may be the default (set spec.default '
        'to false on "site-default" first)'
    ) in r.stderr
    r = api.patch(f"{PROFILES}/plain", json={"spec": {"default": True}}, headers=MERGE)
    assert r.status_code == 422, r.text
    assert 'StorageProfile "site-default" is already the default' in r.json()["message"]
    # Hand the default over: unset it on the first, then set it on the second.
    ok(api.patch(f"{PROFILES}/site-default", json={"spec": {"default": False}}, headers=MERGE))
    ok(api.patch(f"{PROFILES}/plain", json={"spec": {"default": True}}, headers=MERGE))
    ok(api.patch(f"{PROFILES}/plain", json={"spec": {"raw": {"mountOptions": ["ro"]}}}, headers=MERGE))
    out = kubectl(kubectl_132, server, "get", "storageprofiles").splitlines()
    assert out[0].split() == ["NAME", "DEFAULT", "TYPES", "AGE"]
    rows = {line.split()[0]: line.split()[1:3] for line in out[1:]}
    assert rows["plain"] == ["true", "raw"] and rows["site-default"] == ["false", "xfs,gluster,dir"]
    r = api.post(PROFILES, json=profile("bad", xfs={"mountOptions": ["noatime,ro"]}))
    assert r.status_code == 422 and "spec.xfs.mountOptions[0]" in r.json()["message"]


# ---- ownership: a Workflow's deletion takes its objects with it --------------------------------------


def test_deleting_a_workflow_removes_its_storage_objects(api: httpx.Client) -> None:
    wf_path = f"/apis/{G}/v1alpha2/namespaces/slurm/workflows"
    name = new_name("bbgc")
    body = {
        "apiVersion": f"{G}/v1alpha2",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": 77,
            "userID": 1001,
            "groupID": 1001,
        },
    }
    ok(api.post(wf_path, json=body), 201)
    wf = wait_for(
        lambda: (w := ok(api.get(f"{wf_path}/{name}")))["metadata"].get("finalizers") and w,
        20,
        message="the Workflow's finalizer",
    )
    wf = {**wf, "kind": "Workflow"}

    def make(example: Example, obj_name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = example.body("v1alpha7", obj_name, namespace=example.namespace)
        ownership.adopt(obj, wf, owner=owner)
        return ok(api.post(example.path("v1alpha7"), json=obj), 201)

    dbd = make(DIRECTIVE_BREAKDOWN, name)
    assert dbd["metadata"]["ownerReferences"][0]["name"] == name
    servers = make(SERVERS, name, owner=dbd)
    assert servers["metadata"]["ownerReferences"][0]["kind"] == "DirectiveBreakdown"
    mount = make(CLIENT_MOUNT, f"{name}-c1")  # in namespace c1: owner labels only
    assert "ownerReferences" not in mount["metadata"]
    assert mount["metadata"]["labels"][ownership.OWNER_NAME_LABEL] == name
    psi = make(PERSISTENT_STORAGE_INSTANCE, f"{name}-keep")
    # An object of the same job the Workflow does not own stays.
    kept = ok(api.post(STORAGE.path("v1alpha7"), json=STORAGE.body("v1alpha7", f"{name}-n1")), 201)

    ok(api.delete(f"{wf_path}/{name}"))
    paths = [
        DIRECTIVE_BREAKDOWN.path("v1alpha7", name),
        SERVERS.path("v1alpha7", name),
        CLIENT_MOUNT.path("v1alpha7", mount["metadata"]["name"]),
        PERSISTENT_STORAGE_INSTANCE.path("v1alpha7", psi["metadata"]["name"]),
        f"{wf_path}/{name}",
    ]
    wait_for(
        lambda: all(api.get(p).status_code == 404 for p in paths),
        30,
        interval=0.2,
        message="the Workflow and its DirectiveBreakdown, Servers, ClientMount and storage instance gone",
    )
    assert ok(api.get(STORAGE.path("v1alpha7", kept["metadata"]["name"])))["metadata"]["uid"]


def test_yaml_manifests_for_every_version(kubectl_132: Path, server: ServerProcess) -> None:
    """``kubectl apply`` then ``kubectl get -o yaml`` at each version gives the same spec back."""
    for example in DWS_KINDS:
        for version in VERSIONS:
            name = new_name("apply")
            manifest = yaml.safe_dump(example.body(version, name, namespace=example.namespace))
            out = kubectl(kubectl_132, server, "apply", "-f", "-", stdin=manifest)
            assert out.strip() == f"{example.kind.lower()}.{G}/{name} created"
            other = "v1alpha7" if version == "v1alpha2" else "v1alpha2"
            got = yaml.safe_load(
                kubectl(
                    kubectl_132,
                    server,
                    "get",
                    f"{example.plural}.{other}.{G}",
                    name,
                    "-n",
                    str(example.namespace),
                    "-o",
                    "yaml",
                )
            )
            assert got["apiVersion"] == f"{G}/{other}"
            assert {k: got["spec"][k] for k in example.spec} == example.spec
            out = kubectl(kubectl_132, server, "apply", "-f", "-", stdin=manifest)
            assert out.strip() == f"{example.kind.lower()}.{G}/{name} unchanged"
