"""Access decisions for the node-agent and user roles on the storage kinds, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.resources import access, errors
from slurmlink.resources.access import NodeScope, OwnerScope, Reach, UnixAccount, decide
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws import ownership
from slurmlink.resources.dws.clientmount import CLIENT_MOUNT
from slurmlink.resources.dws.directivebreakdown import DIRECTIVE_BREAKDOWN
from slurmlink.resources.dws.servers import SERVERS
from slurmlink.resources.dws.storage import STORAGE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.storage.storagepool import STORAGE_POOL
from slurmlink.resources.storage.storageprofile import STORAGE_PROFILE

ALICE = UnixAccount("alice", 1001, 1001)


def obj(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_node_identity_rule() -> None:
    assert roles.node_user("n1") == "system:node:n1"
    assert roles.node_of(Identity("system:node:n1", ("slurmlink:node-agent",))) == "n1"
    for user in ("n1", "system:node:", "system:node:N1", "system:node:a.b", "system:nodes:n1"):
        assert roles.node_of(Identity(user)) is None, user
    assert roles.node_name_error("compute-01") is None
    assert roles.node_name_error("x" * 64) is not None
    assert roles.role_group("node-agent") == "slurmlink:node-agent"


@pytest.mark.parametrize(
    ("kind", "verb", "reach"),
    [
        (STORAGE, "get", Reach.ALL),
        (STORAGE, "list", Reach.ALL),
        (STORAGE, "create", Reach.NODE),
        (STORAGE, "patch", Reach.NODE),
        (STORAGE, "delete", None),
        (STORAGE, "deletecollection", None),
        (CLIENT_MOUNT, "watch", Reach.ALL),
        (CLIENT_MOUNT, "update", Reach.NODE),
        (CLIENT_MOUNT, "delete", None),
        (WORKFLOW, "get", None),
        (DIRECTIVE_BREAKDOWN, "list", None),
        (SERVERS, "get", None),
        (STORAGE_POOL, "list", None),
        (STORAGE_PROFILE, "get", None),
    ],
)
def test_what_a_node_agent_may_do(kind: Any, verb: str, reach: Reach | None) -> None:
    assert decide(kind.access, ["node-agent"], verb) is reach


def test_node_scope_writes_only_its_nodes_objects() -> None:
    storage = NodeScope("n1", "system:node:n1", STORAGE.access)
    assert storage.may_create(obj("n1")) and storage.may_write(obj("n1", "elsewhere"))
    assert not storage.may_write(obj("n2"))
    mounts = NodeScope("c1", "system:node:c1", CLIENT_MOUNT.access)
    assert mounts.may_write(obj("job", "c1", node="c9"))  # its namespace
    assert mounts.may_write(obj("job", "c2", node="c1"))  # aimed at it
    assert not mounts.may_write(obj("job", "c2", node="c2"))
    with pytest.raises(errors.ApiError) as info:
        mounts.stamp({"metadata": {"labels": {access.OWNER_UID_LABEL: "1001"}}})
    assert info.value.code == 403


def test_every_kind_grants_admin_everything_and_viewers_reads() -> None:
    for kind in default_registry().kinds():
        for verb in access.ALL:
            assert decide(kind.access, ["admin"], verb) is Reach.ALL
        for verb in access.READ:
            assert decide(kind.access, ["viewer"], verb) is Reach.ALL, kind.kind
        for verb in access.WRITE:
            assert decide(kind.access, ["viewer"], verb) is None, kind.kind


def test_users_read_their_jobs_objects() -> None:
    workflow = {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "metadata": {"name": "bb1", "namespace": "slurm", "uid": "u-1"},
        "spec": {"userID": 1001},
    }
    servers = obj("bb1", "slurm")
    ownership.adopt(servers, workflow)
    scope = OwnerScope(ALICE, SERVERS.access)
    assert scope.may_read(servers)
    assert decide(SERVERS.access, ["user"], "patch") is None
    assert not scope.may_read(obj("bb2", "slurm"))
    dbd = OwnerScope(ALICE, DIRECTIVE_BREAKDOWN.access)
    assert dbd.may_read(obj("d", "slurm", userID=1001)) and not dbd.may_read(obj("d", "slurm", userID=7))
    mounts = OwnerScope(ALICE, CLIENT_MOUNT.access)
    assert mounts.may_read(obj("m", "c1", mounts=[{"userID": 1001}]))
    assert not mounts.may_read(obj("m", "c1", mounts=[{"userID": 7}]))
    assert decide(STORAGE.access, ["user"], "get") is None
    assert decide(STORAGE_POOL.access, ["user"], "list") is Reach.OWN
    assert OwnerScope(ALICE, STORAGE_POOL.access).may_read({"metadata": {"name": "xfs"}})
    assert decide(STORAGE_PROFILE.access, ["user"], "get") is None


def test_ownership_labels_and_references() -> None:
    workflow = {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "metadata": {"name": "bb1", "namespace": "slurm", "uid": "u-1"},
        "spec": {"userID": 1001},
    }
    same_ns = obj("bb1", "slurm")
    ownership.adopt(same_ns, workflow)
    labels = same_ns["metadata"]["labels"]
    assert labels[ownership.WORKFLOW_NAME_LABEL] == "bb1" and labels[access.OWNER_UID_LABEL] == "1001"
    assert labels[ownership.OWNER_KIND_LABEL] == "Workflow" and labels[ownership.OWNER_UID_LABEL_DWS] == "u-1"
    [ref] = same_ns["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "name": "bb1",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    other_ns = obj("bb1-c1", "c1")
    ownership.adopt(other_ns, workflow)
    assert "ownerReferences" not in other_ns["metadata"]
    assert ownership.owned_by_labels(other_ns, workflow)
    assert ownership.label_owner_key(other_ns, "Workflow") == ("slurm", "bb1")
    ownership.disown(same_ns, workflow)
    assert "ownerReferences" not in same_ns["metadata"] and not ownership.owned_by_labels(same_ns, workflow)


def test_the_oldest_default_profile_wins() -> None:
    from slurmlink.resources.storage.storageprofile import default_profile

    def prof(name: str, created: str, default: bool) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"default": default}}

    assert default_profile([prof("a", "2026-01-02T00:00:00Z", False)]) is None
    both = [prof("b", "2026-01-03T00:00:00Z", True), prof("a", "2026-01-02T00:00:00Z", True)]
    assert default_profile(both) is both[1]
