"""Core ``Node``s, one per Partition, as the seed's virtual kubelets showed Slurm partitions.

``kubectl get nodes`` listed ``slurm-<cluster>-<partition>`` for every partition in the seed, and its
jobs picked a partition with a ``nodeSelector`` on those nodes' labels. slurmlink keeps that view
without a kubelet: a Node here is computed from a ``Partition`` on every read (a virtual kind, see
``resources.kind.VirtualSource``), so it can never disagree with it, and it is read-only and
cannot be watched. Labels, as the seed's watchdog wrote them but without its faults: ``type:
virtual-kubelet``, ``kubernetes.io/role: agent``, ``kubernetes.io/hostname``, and under
``wlm.sylabs.io/``: ``partition``, ``nodes`` (most nodes per job), ``wall-time`` (seconds),
``cpu-per-node``, ``mem-per-node`` (MiB) and ``<feature>[_<version>]: <quantity>`` per extra feature
(``"true"`` when it has no quantity). An unlimited value has no label at all, never ``0`` or
``nan``, so a selector can never match a limit that is not there. The Partition's own labels (the
admin's, ``wlm.sylabs.io/containers: singularity`` for instance) are the Node's too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slurmlink import __version__
from slurmlink.resources import errors
from slurmlink.resources.access import READ, AccessPolicy, Scope, UnixAccount, base_roles
from slurmlink.resources.bridge.partition import feature_key, node_name
from slurmlink.resources.kind import Kind, Obj, PrinterColumn
from slurmlink.resources.quantity import QuantityError, mebibytes

PREFIX = "wlm.sylabs.io/"
#: The seed's virtual kubelets' taint: nothing but SlurmJobs was meant to land there.
TAINT = {"key": "virtual-kubelet.io/provider", "value": "wlm", "effect": "NoSchedule"}

#: Lists every Partition (storage version) when called; the server hands in its own lister.
PartitionLister = Callable[[], Awaitable[list[Obj]]]


def _memory_mib(spec: dict[str, Any]) -> int | None:
    value = spec.get("memoryPerNode")
    try:
        return mebibytes(value) if value is not None else None
    except QuantityError:
        return None


def node_labels(partition: Obj) -> dict[str, str]:
    """The labels of ``partition``'s Node (see the module docstring)."""
    spec = partition.get("spec") or {}
    # The Partition's object name, not its Slurm name: the publisher keeps object names unique
    # (``GPU_Short`` and ``gpu-short`` become ``gpu-short`` and ``gpu-short-2``), so Node names are too.
    own = (partition.get("metadata") or {}).get("name") or spec.get("slurmName", "")
    name = node_name(str(spec.get("cluster", "")), str(own))
    labels: dict[str, str] = dict((partition.get("metadata") or {}).get("labels") or {})
    labels.update({"type": "virtual-kubelet", "kubernetes.io/role": "agent", "kubernetes.io/hostname": name})
    labels["kubernetes.io/os"] = "linux"
    partition_label = ((partition.get("metadata") or {}).get("labels") or {}).get("slurmlink.io/partition")
    if partition_label:
        labels[PREFIX + "partition"] = partition_label
    max_nodes = spec.get("maxNodesPerJob") or spec.get("totalNodes")
    wall = spec.get("maxTime")
    for key, value in (
        ("nodes", max_nodes),
        ("wall-time", wall * 60 if isinstance(wall, int) else None),
        ("cpu-per-node", spec.get("cpusPerNode")),
        ("mem-per-node", _memory_mib(spec)),
    ):
        if isinstance(value, int) and value > 0:
            labels[PREFIX + key] = str(value)
    for extra in spec.get("extraFeatures") or []:
        if isinstance(extra, dict) and isinstance(extra.get("name"), str):
            quantity = extra.get("quantity")
            value = str(quantity) if isinstance(quantity, int) else "true"
            labels[PREFIX + feature_key(extra["name"], extra.get("version"))] = value
    return labels


def matches(selector: dict[str, str], partition: Obj) -> bool:
    """Whether a seed job's ``nodeSelector`` (``wlmjob.node_selector``) picks ``partition``'s Node."""
    labels = node_labels(partition)
    return all(labels.get(key) == value for key, value in selector.items())


def node_object(partition: Obj) -> Obj:
    """The Node showing ``partition``."""
    spec, status = partition.get("spec") or {}, partition.get("status") or {}
    m = partition.get("metadata") or {}
    labels = node_labels(partition)
    name = labels["kubernetes.io/hostname"]
    capacity: dict[str, str] = {"pods": "0"}
    if isinstance(spec.get("cpusPerNode"), int):
        capacity["cpu"] = str(spec["cpusPerNode"])
    if (mib := _memory_mib(spec)) is not None:
        capacity["memory"] = f"{mib}Mi"
    state = status.get("state")
    ready = state == "UP"
    since = str(status.get("observedTime") or m.get("creationTimestamp") or "")
    condition = {
        "type": "Ready",
        "status": "True" if ready else "Unknown" if state is None else "False",
        "reason": f"Partition{str(state).capitalize()}" if state else "PartitionNotObserved",
        "message": f"Slurm partition {spec.get('slurmName')} is {state}"
        if state
        else "the bridge has not reported the partition's state yet",
        "lastHeartbeatTime": since,
        "lastTransitionTime": since,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
            "labels": labels,
            "annotations": {"slurmlink.io/partition-object": m.get("name")},
        },
        "spec": {"taints": [dict(TAINT)], "unschedulable": state not in (None, "UP")},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [condition],
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": {
                "kubeletVersion": f"slurmlink-{__version__}",
                "operatingSystem": "linux",
                "architecture": "",
                "containerRuntimeVersion": "slurm",
                "kernelVersion": "",
                "osImage": "",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


class PartitionNodes:
    """The ``VirtualSource`` of ``Node``: one Node per Partition, computed on each read."""

    read_only_message = (
        "nodes are computed from the Partitions the job bridge publishes (one per Slurm partition) "
        "and cannot be written: see kubectl get partitions"
    )

    def __init__(self, list_partitions: PartitionLister) -> None:
        self.list_partitions = list_partitions

    async def list_objects(self, scope: Scope | None) -> list[Obj]:
        nodes = [node_object(p) for p in await self.list_partitions()]
        return sorted(nodes, key=lambda n: str(n["metadata"]["name"]))

    async def get_object(self, name: str, scope: Scope | None) -> Obj:
        for node in await self.list_objects(scope):
            if node["metadata"]["name"] == name:
                return node
        raise errors.not_found("", "nodes", name)


def _anyone(_obj: Obj, _account: UnixAccount) -> bool:
    return True


def _status(obj: Obj) -> str:
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )
    text = "Ready" if ready else "NotReady"
    return f"{text},SchedulingDisabled" if (obj.get("spec") or {}).get("unschedulable") else text


def _roles(obj: Obj) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/role") or "<none>"


def node_kind(list_partitions: PartitionLister) -> Kind:
    """The ``Node`` kind over the Partitions ``list_partitions`` returns; every role reads it."""
    return Kind(
        group="",
        kind="Node",
        plural="nodes",
        singular="node",
        namespaced=False,
        versions=("v1",),
        storage_version="v1",
        short_names=("no",),
        printer_columns=(
            PrinterColumn(
                "Status", ".status.conditions", "string", "Ready when the partition is UP", value=_status
            ),
            PrinterColumn("Roles", ".metadata.labels", "string", "The node's role", value=_roles),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
            PrinterColumn("Version", ".status.nodeInfo.kubeletVersion", "string", "What serves the node"),
            PrinterColumn(
                "Partition",
                ".metadata.labels",
                "string",
                "The Slurm partition",
                priority=1,
                value=lambda o: (o["metadata"].get("labels") or {}).get(PREFIX + "partition"),
            ),
        ),
        access=AccessPolicy(roles=base_roles(node_agent=READ, accountant=READ), user_reads=_anyone),
        verbs=("get", "list"),
        source=PartitionNodes(list_partitions),
    )
