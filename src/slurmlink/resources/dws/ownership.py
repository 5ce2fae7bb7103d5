"""Which Workflow (or other DWS object) an object belongs to: upstream's labels, ownerReferences, and
slurmlink's owner stamp.

Upstream marks a child with owner labels (``owner.kind/name/namespace/uid``) and, when the child is
in the owner's namespace, a controlling ownerReference; children of a Workflow also carry the
``workflow.name/namespace/uid`` labels. An ownerReference cannot cross namespaces (Kubernetes treats
such a reference as pointing at a missing owner), so children elsewhere, such as a compute node's
``ClientMount``s in the namespace named after the node, are found by their owner labels alone.

Deleting the owner removes both kinds of children: those with an ownerReference through the garbage
collector, and (for a Workflow) those with owner labels in any namespace through the Workflow
controller's finalizer, as upstream's ``DeleteChildren`` does.
"""

from __future__ import annotations

from typing import Any

from slurmlink.resources.access import OWNER_UID_LABEL
from slurmlink.resources.dws.group import GROUP
from slurmlink.resources.kind import Obj

OWNER_KIND_LABEL = f"{GROUP}/owner.kind"
OWNER_NAME_LABEL = f"{GROUP}/owner.name"
OWNER_NAMESPACE_LABEL = f"{GROUP}/owner.namespace"
OWNER_UID_LABEL_DWS = f"{GROUP}/owner.uid"
OWNER_LABELS = (OWNER_KIND_LABEL, OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL, OWNER_UID_LABEL_DWS)
WORKFLOW_NAME_LABEL = f"{GROUP}/workflow.name"
WORKFLOW_NAMESPACE_LABEL = f"{GROUP}/workflow.namespace"
WORKFLOW_UID_LABEL = f"{GROUP}/workflow.uid"
PERSISTENT_STORAGE_NAME_LABEL = f"{GROUP}/persistentstorage.name"
PERSISTENT_STORAGE_NAMESPACE_LABEL = f"{GROUP}/persistentstorage.namespace"


def _meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = obj["metadata"] = {}
    return m


def _add_labels(obj: Obj, labels: dict[str, str]) -> None:
    m = _meta(obj)
    m["labels"] = {**(m.get("labels") or {}), **labels}


def owner_labels(owner: Obj) -> dict[str, str]:
    """Upstream's ``AddOwnerLabels`` values for ``owner``."""
    m = owner.get("metadata") or {}
    return {
        OWNER_KIND_LABEL: str(owner.get("kind") or ""),
        OWNER_NAME_LABEL: str(m.get("name") or ""),
        OWNER_NAMESPACE_LABEL: str(m.get("namespace") or ""),
        OWNER_UID_LABEL_DWS: str(m.get("uid") or ""),
    }


def workflow_labels(workflow: Obj) -> dict[str, str]:
    """Upstream's ``AddWorkflowLabels`` values."""
    m = workflow.get("metadata") or {}
    return {
        WORKFLOW_NAME_LABEL: str(m.get("name") or ""),
        WORKFLOW_NAMESPACE_LABEL: str(m.get("namespace") or ""),
        WORKFLOW_UID_LABEL: str(m.get("uid") or ""),
    }


def owner_reference(owner: Obj, *, controller: bool = True, block_owner_deletion: bool = True) -> Obj:
    m = owner.get("metadata") or {}
    return {
        "apiVersion": str(owner.get("apiVersion") or ""),
        "kind": str(owner.get("kind") or ""),
        "name": str(m.get("name") or ""),
        "uid": str(m.get("uid") or ""),
        "controller": controller,
        "blockOwnerDeletion": block_owner_deletion,
    }


def own(child: Obj, owner: Obj) -> None:
    """Mark ``child`` as ``owner``'s: owner labels, plus a controlling ownerReference when the child
    lives in the owner's namespace (or the owner is cluster-scoped)."""
    _add_labels(child, owner_labels(owner))
    owner_ns = (owner.get("metadata") or {}).get("namespace") or ""
    child_ns = _meta(child).get("namespace") or ""
    if owner_ns and owner_ns != child_ns:
        return
    ref = owner_reference(owner)
    refs = [r for r in _meta(child).get("ownerReferences") or [] if r.get("uid") != ref["uid"]]
    _meta(child)["ownerReferences"] = [*refs, ref]


def disown(child: Obj, owner: Obj) -> None:
    """Undo :func:`own` (upstream's ``RemoveOwnerLabels`` plus the reference), e.g. for a persistent
    storage instance that outlives the Workflow that created it."""
    uid = (owner.get("metadata") or {}).get("uid")
    m = _meta(child)
    labels = {k: v for k, v in (m.get("labels") or {}).items() if k not in OWNER_LABELS}
    m["labels"] = labels
    refs = [r for r in m.get("ownerReferences") or [] if r.get("uid") != uid]
    if refs:
        m["ownerReferences"] = refs
    else:
        m.pop("ownerReferences", None)


def adopt(child: Obj, workflow: Obj, *, owner: Obj | None = None) -> None:
    """Mark ``child`` as an object of ``workflow``'s job.

    Workflow labels; owned by ``owner`` (default: the Workflow itself, e.g. a ``Servers`` is owned by
    its ``DirectiveBreakdown``); and stamped with the job user's uid (``spec.userID``) in
    slurmlink's owner label, so that user's kubeconfig (role ``user``) can read it.
    """
    labels = workflow_labels(workflow)
    user_id = (workflow.get("spec") or {}).get("userID")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        labels[OWNER_UID_LABEL] = str(user_id)
    _add_labels(child, labels)
    own(child, owner if owner is not None else workflow)


def owned_by_labels(obj: Obj, owner: Obj) -> bool:
    """Whether ``obj`` carries ``owner``'s owner labels (upstream's ``MatchingOwner``)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in owner_labels(owner).items())


def label_owner_key(obj: Obj, kind: str) -> tuple[str, str] | None:
    """(namespace, name) of the ``kind`` object that ``obj``'s owner labels name, if they name one."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(OWNER_KIND_LABEL) != kind or not labels.get(OWNER_NAME_LABEL):
        return None
    return str(labels.get(OWNER_NAMESPACE_LABEL) or ""), str(labels[OWNER_NAME_LABEL])
