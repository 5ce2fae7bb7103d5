"""A service submitting SlurmJobs on named users' behalf, only as far as the admin allows.

The server is configured with ``bridge_delegates = {slurmlink-portal = ["slurmlink-alice"]}``: the
portal's ``user`` credential may create SlurmJobs owned by alice (the job then runs as alice) and
read them, but not act for bob, not own other kinds for alice, and root is never a target.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from slurmlink import config as config_mod
from slurmlink.resources.access import OWNER_ANNOTATION, OWNER_UID_LABEL
from support.server import ServerProcess
from support.storage import world_searchable_dir
from support.unix_users import ensure_unix_user

PORTAL, ALICE, BOB = "slurmlink-portal", "slurmlink-alice", "slurmlink-bob"
V1 = "/apis/slurmlink.io/v1/namespaces/default/slurmjobs"
WLM = "/apis/wlm.sylabs.io/v1alpha1/namespaces/default/slurmjobs"


@pytest.fixture(scope="module")
def users() -> dict[str, Any]:
    return {login: ensure_unix_user(login) for login in (PORTAL, ALICE, BOB)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, users: dict[str, Any]) -> Iterator[ServerProcess]:
    base = world_searchable_dir("slurmlink-delegation-")
    conf = tmp_path_factory.mktemp("delegation") / "config.toml"
    conf.write_text(f'[serve]\nbridge_delegates = {{ "{PORTAL}" = ["{ALICE}"] }}\n')
    srv = ServerProcess(
        tmp_path_factory.mktemp("delegation") / "state",
        extra_args=(
            "--config", str(conf), "--bridge", "--bridge-root", str(base / "jobs"),
            "--slurm-conf", "/nonexistent/slurm.conf",
        ),
    )  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[dict[str, httpx.Client]]:
    made = {
        login: server.client(server.issue_kubeconfig(login, "user", "default"))
        for login in (PORTAL, ALICE, BOB)
    }
    try:
        yield made
    finally:
        for client in made.values():
            client.close()


def job(name: str, owner: str | None = None, group: str = "slurmlink.io/v1") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if owner is not None:
        metadata["annotations"] = {OWNER_ANNOTATION: owner}
    spec = (
        {"script": "#!/bin/sh\ntrue\n", "suspend": True}
        if group == "slurmlink.io/v1"
        else {"batch": "#!/bin/sh\n"}
    )
    return {"apiVersion": group, "kind": "SlurmJob", "metadata": metadata, "spec": spec}


def names(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["metadata"]["name"] for item in response.json()["items"]}


def test_a_delegate_submits_for_a_listed_user_who_owns_the_job(
    clients: dict[str, httpx.Client], users: dict[str, Any]
) -> None:
    portal, alice, bob = clients[PORTAL], clients[ALICE], clients[BOB]
    r = portal.post(V1, json=job("for-alice", ALICE))
    assert r.status_code == 201, r.text
    metadata = r.json()["metadata"]
    assert metadata["labels"][OWNER_UID_LABEL] == str(users[ALICE].pw_uid)
    assert metadata["annotations"][OWNER_ANNOTATION] == ALICE
    # The seed's kind too.
    assert portal.post(WLM, json=job("seed-for-alice", ALICE, "wlm.sylabs.io/v1alpha1")).status_code == 201
    # Alice sees her job; the portal sees the jobs it acts for; bob sees nothing of it.
    assert "for-alice" in names(alice.get(V1))
    assert "for-alice" in names(portal.get(V1))
    assert "for-alice" not in names(bob.get(V1))
    assert bob.get(f"{V1}/for-alice").status_code in (403, 404)
    # The portal may cancel it (a write), as alice could.
    patched = portal.patch(
        f"{V1}/for-alice",
        json={"spec": {"cancel": True}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text


def test_a_delegate_cannot_act_for_anyone_else(clients: dict[str, httpx.Client]) -> None:
    portal = clients[PORTAL]
    for owner in (BOB, "root"):
        r = portal.post(V1, json=job(f"for-{owner}", owner))
        assert r.status_code == 403, r.text
        assert "owner" in r.json()["message"]
    # Only SlurmJobs: a ConfigMap the portal makes for alice is refused.
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "for-alice", "annotations": {OWNER_ANNOTATION: ALICE}},
        "data": {},
    }
    assert portal.post("/api/v1/namespaces/default/configmaps", json=configmap).status_code == 403
    # Alice herself cannot act for the portal or anyone: delegation is one way.
    assert clients[ALICE].post(V1, json=job("alice-for-bob", BOB)).status_code == 403


def test_a_job_the_delegate_makes_without_an_owner_is_its_own(
    clients: dict[str, httpx.Client], users: dict[str, Any]
) -> None:
    r = clients[PORTAL].post(V1, json=job("portal-own"))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"]["labels"][OWNER_UID_LABEL] == str(users[PORTAL].pw_uid)
    assert "portal-own" not in names(clients[ALICE].get(V1))


def test_uploads_on_behalf_follow_the_same_table(
    clients: dict[str, httpx.Client], users: dict[str, Any]
) -> None:
    portal = clients[PORTAL]
    ok = portal.post(
        "/bridge/v1/namespaces/default/uploads", params={"owner": users[ALICE].pw_uid}, content=b"x"
    )
    assert ok.status_code == 200, ok.text
    refused = portal.post(
        "/bridge/v1/namespaces/default/uploads", params={"owner": users[BOB].pw_uid}, content=b"x"
    )
    assert refused.status_code == 403


def test_a_table_naming_root_or_not_a_list_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="nobody may act for root"):
        config_mod.build({"bridge_delegates": {"portal": ["root"]}}, {})
    with pytest.raises(ValueError, match="must be a list"):
        config_mod.build({"bridge_delegates": {"portal": "alice"}}, {})
    assert config_mod.build({}, {}).bridge_delegates == {}
