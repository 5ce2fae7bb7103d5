"""Publishing Slurm partitions as ``slurmlink.io/v1`` Partitions, so jobs are judged against them.

:class:`PartitionPublisher` runs discovery (:func:`slurmlink.slurm.partitions.discover_partitions`: two
Slurm commands) every ``interval`` seconds, or at once when poked, and :func:`publish` makes the API
agree with what Slurm said:

* A partition without a Partition gets one; a Partition's spec and status are written only when they
  differ from what is stored. ``status.observedTime`` alone is no difference: it says when the stored
  status was read, so an idle cluster's refresh writes nothing at all.
* The admin's labels and annotations on a Partition are kept; the kind recomputes its own labels from
  the spec on every write.
* A Partition whose Slurm partition is gone (or now hidden) is marked ``status.state: GONE`` on the
  first refresh that misses it, so jobs naming it are refused with that reason, and deleted on the next
  refresh that still misses it. The mark is stored in the object, so a restart between the two
  refreshes changes nothing.
* Only Partitions whose ``spec.cluster`` is this cluster are touched: several clusters can publish
  into one API.
* Names: the Slurm name's DNS slug (``GPU_Short`` → ``gpu-short``). When the slug is taken (``GPU_Short``
  and ``gpu-short`` in one cluster, or ``debug`` in two clusters), the later partition in Slurm's order
  gets ``-2`` (``-3``, …). A Partition keeps the name it was published under for as long as it exists,
  so names never move between partitions from one refresh to the next.

Slurm's values are mapped for admission (``resources.bridge.fit``), which refuses a job only when it can
certainly not run: ``cpusPerNode`` is the fewest CPUs of a node a job may use (``MaxCPUsPerNode``
applied), ``memoryPerNode`` the least memory a job may use on a node (the node's, cut by
``MaxMemPerNode`` and by ``MaxMemPerCPU`` times those CPUs), and ``features`` every feature any of its
nodes has (a ``--constraint`` on one that only some nodes have still runs there). ``null`` is
unlimited; a zero Slurm reports (no data, or a limit no job meets) is left ``null`` too, since the
kind refuses ``0``, and Slurm still judges the job at submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slurmlink.client.base import Client
from slurmlink.resources.bridge.partition import (
    CLUSTER_LABEL,
    DEFAULT_LABEL,
    FEATURE_PREFIX,
    GRES_PREFIX,
    PARTITION,
    PARTITION_LABEL,
    object_name,
    selection_labels,
)
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Obj
from slurmlink.slurm.commands import SlurmCommands
from slurmlink.slurm.partition_config import PartitionConfig
from slurmlink.slurm.partitions import Partition, PartitionDiscoveryError, discover_partitions

log = logging.getLogger(__name__)

GONE = "GONE"
#: Partition states the kind accepts from Slurm (``GONE`` is the publisher's own).
_SLURM_STATES = frozenset({"UP", "DOWN", "DRAIN", "INACTIVE"})
#: Status fields the publisher owns; ``observedTime`` is written with them but never compared.
_STATUS_FIELDS = ("state", "totalCPUs", "idleCPUs", "allocatedCPUs")
_OWNED_LABEL_KEYS = frozenset({PARTITION_LABEL, CLUSTER_LABEL, DEFAULT_LABEL})
_OWNED_LABEL_PREFIXES = (FEATURE_PREFIX, GRES_PREFIX)
_MAX_NAME = 63


@dataclass(frozen=True)
class PublishSummary:
    """What one :func:`publish` did, by object name; ``writes`` counts API writes (0 when in step)."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: (object name, the API's message) for Partitions that could not be written; retried next refresh.
    failed: tuple[tuple[str, str], ...] = ()
    writes: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.gone or self.deleted)

    def describe(self) -> str:
        """One line for the log: ``created a, b; gone c`` (``no change`` when nothing happened)."""
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("created", self.created),
                ("updated", self.updated),
                ("gone", self.gone),
                ("deleted", self.deleted),
            )
            if names
        ]
        parts += [f"failed {name}: {message}" for name, message in self.failed]
        return "; ".join(parts) or "no change"


@dataclass
class _Tally:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    writes: int = 0

    def summary(self) -> PublishSummary:
        return PublishSummary(
            created=tuple(self.created),
            updated=tuple(self.updated),
            gone=tuple(self.gone),
            deleted=tuple(self.deleted),
            unchanged=tuple(self.unchanged),
            failed=tuple(self.failed),
            writes=self.writes,
        )


def rfc3339(when: dt.datetime) -> str:
    """Second-precision UTC, as Kubernetes writes times; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _positive(value: int | None) -> int | None:
    """A limit the kind accepts: at least 1, else null (it refuses 0, which someone reads as unlimited)."""
    return value if value is not None and value > 0 else None


def _cpus_per_node(record: Partition) -> int | None:
    known = [v for v in (record.cpus_per_node, record.max_cpus_per_node) if v is not None and v > 0]
    return min(known, default=None)


def _memory_per_node_mib(record: Partition) -> int | None:
    cpus = _cpus_per_node(record)
    per_cpu = _positive(record.max_memory_per_cpu)
    limits = [record.memory_per_node, record.max_memory_per_node]
    if per_cpu is not None and cpus is not None:
        limits.append(per_cpu * cpus)
    known = [v for v in limits if v is not None and v > 0]
    return min(known, default=None)


def _names(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def partition_spec(record: Partition, cluster: str) -> dict[str, Any]:
    """The Partition's ``spec`` for one discovery record (see the module docstring for the mapping)."""
    memory = _memory_per_node_mib(record)
    return {
        "slurmName": record.name,
        "cluster": cluster,
        "default": record.default,
        # No compressor in slurm.hostlist yet: the comma list is a host list Slurm reads as well.
        "nodes": ",".join(record.nodes) or None,
        "totalNodes": max(record.total_nodes, 0),
        "cpusPerNode": _cpus_per_node(record),
        "memoryPerNode": f"{memory}Mi" if memory is not None else None,
        "maxTime": _positive(record.max_time),
        "defaultTime": _positive(record.default_time),
        "maxNodesPerJob": _positive(record.max_nodes),
        "features": list(dict.fromkeys(record.features + record.features_on_some_nodes)),
        "gres": list(record.gres),
        "allowedAccounts": _names(record.allowed_accounts),
        "allowedQOS": _names(record.allowed_qos),
        "extraFeatures": [
            {"name": extra.name, "version": extra.version, "quantity": extra.quantity}
            for extra in record.extra_features
        ],
    }


def partition_status(record: Partition, observed: dt.datetime) -> dict[str, Any]:
    """The Partition's ``status``: what changes minute to minute, and when it was read."""
    return {
        "state": record.state if record.state in _SLURM_STATES else None,
        "totalCPUs": max(record.total_cpus, 0),
        "idleCPUs": max(record.idle_cpus, 0),
        "allocatedCPUs": max(record.allocated_cpus, 0),
        "observedTime": rfc3339(observed),
    }


def partition_object(
    record: Partition, cluster: str, observed: dt.datetime, *, name: str | None = None
) -> Obj:
    """The Partition object for one discovery record of ``cluster``.

    ``name`` is the object name :func:`publish` chose (default: the Slurm name's slug,
    :func:`~slurmlink.resources.bridge.partition.object_name`). Labels are left to the kind, which
    computes them from the spec.
    """
    return {
        "apiVersion": f"{PARTITION.group}/{PARTITION.storage_version}",
        "kind": PARTITION.kind,
        "metadata": {"name": name or object_name(record.name)},
        "spec": partition_spec(record, cluster),
        "status": partition_status(record, observed),
    }


def _without_nulls(value: Any) -> Any:
    """``value`` with null-valued keys dropped at every depth: a stored object may omit them."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _spec_differs(stored: Obj, spec: dict[str, Any]) -> bool:
    if _without_nulls(stored.get("spec") or {}) != _without_nulls(spec):
        return True
    labels = (stored.get("metadata") or {}).get("labels") or {}
    owned = {k: v for k, v in labels.items() if k in _OWNED_LABEL_KEYS or k.startswith(_OWNED_LABEL_PREFIXES)}
    return owned != selection_labels(spec)  # the kind's label rules changed since it was written


def _status_differs(stored: Obj, status: dict[str, Any]) -> bool:
    old = stored.get("status") or {}
    return any(old.get(key) != status.get(key) for key in _STATUS_FIELDS)


def _suffixed(base: str, n: int) -> str:
    suffix = f"-{n}"
    return base[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def assign_names(records: Sequence[Partition], ours: Iterable[Obj], taken: Iterable[str]) -> dict[str, str]:
    """Slurm name → object name for ``records``.

    A partition keeps the name of its existing Partition (``ours``: this cluster's); a new one gets its
    slug, or, when ``taken`` (any cluster's Partitions) or an earlier record has it, the first free
    ``-2``, ``-3``, … in Slurm's order.
    """
    wanted = {record.name for record in records}
    used = set(taken)
    chosen: dict[str, str] = {}
    existing = sorted(
        ((str(obj["spec"]["slurmName"]), str(obj["metadata"]["name"])) for obj in ours),
        key=lambda pair: (pair[1] != object_name(pair[0]), len(pair[1]), pair[1]),
    )
    for slurm_name, name in existing:
        if slurm_name in wanted and slurm_name not in chosen:
            chosen[slurm_name] = name
    for record in records:
        if record.name in chosen:
            continue
        base = object_name(record.name)
        name, n = base, 1
        while name in used:
            n += 1
            name = _suffixed(base, n)
        chosen[record.name] = name
        used.add(name)
    return chosen


def _spec_of(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


async def _write_status(client: Client, stored: Obj, status: dict[str, Any]) -> Obj:
    body = copy.deepcopy(stored)
    body["status"] = {**(stored.get("status") or {}), **status}
    return await client.update_status(PARTITION, body)


async def _sync(client: Client, stored: Obj, desired: Obj, tally: _Tally) -> None:
    """Bring one existing Partition in step with ``desired``; a conflict (someone wrote in between,
    an admin adding a label) is retried once on a fresh read, so their change is kept."""
    name = desired["metadata"]["name"]
    wrote = False
    for attempt in range(2):
        try:
            if _spec_differs(stored, desired["spec"]):
                body = copy.deepcopy(stored)
                body["spec"] = copy.deepcopy(desired["spec"])
                stored = await client.update(PARTITION, body)
                tally.writes += 1
                wrote = True
            if _status_differs(stored, desired["status"]):
                stored = await _write_status(client, stored, desired["status"])
                tally.writes += 1
                wrote = True
            break
        except ApiError as exc:
            if exc.code != 409 or attempt:
                raise
            stored = await client.get(PARTITION, None, name)
    (tally.updated if wrote else tally.unchanged).append(name)


async def _create(client: Client, desired: Obj, tally: _Tally) -> None:
    created = await client.create(PARTITION, copy.deepcopy(desired))
    tally.writes += 1
    tally.created.append(desired["metadata"]["name"])
    if _status_differs(created, desired["status"]):  # a create cannot set status: /status does
        await _write_status(client, created, desired["status"])
        tally.writes += 1


async def _vanished(client: Client, stored: Obj, observed: dt.datetime, tally: _Tally) -> None:
    name = stored["metadata"]["name"]
    if (stored.get("status") or {}).get("state") != GONE:
        await _write_status(client, stored, {"state": GONE, "observedTime": rfc3339(observed)})
        tally.writes += 1
        tally.gone.append(name)
        return
    try:
        await client.delete(PARTITION, None, name)
    except ApiError as exc:
        if exc.code != 404:  # deleted by someone else meanwhile: just as good
            raise
    tally.writes += 1
    tally.deleted.append(name)


async def publish(client: Client, records: Sequence[Partition], cluster: str) -> PublishSummary:
    """Make this cluster's Partitions agree with ``records`` (one discovery, Slurm's order).

    Hidden partitions are left out (their Partitions go as if Slurm had dropped them). Listing the
    Partitions, or an unreachable API (503), fails the whole call; a write the API refuses is
    reported in :attr:`PublishSummary.failed` and the others go on.
    """
    observed = dt.datetime.now(dt.UTC)
    shown: dict[str, Partition] = {}
    for record in records:
        if not record.hidden:
            shown.setdefault(record.name, record)  # Slurm names are unique; be sure
    everything, _ = await client.list(PARTITION)
    ours = [
        obj
        for obj in everything
        if _spec_of(obj).get("cluster") == cluster and isinstance(_spec_of(obj).get("slurmName"), str)
    ]
    names = assign_names(list(shown.values()), ours, (str(obj["metadata"]["name"]) for obj in everything))
    by_name = {str(obj["metadata"]["name"]): obj for obj in ours}
    tally = _Tally()

    async def attempt(name: str, step: Awaitable[None]) -> None:
        try:
            await step
        except ApiError as exc:
            if exc.code == 503:
                raise
            tally.failed.append((name, exc.message))

    for slurm_name, record in shown.items():
        name = names[slurm_name]
        desired = partition_object(record, cluster, observed, name=name)
        stored = by_name.pop(name, None)
        if stored is None:
            await attempt(name, _create(client, desired, tally))
        else:
            await attempt(name, _sync(client, stored, desired, tally))
    for name, stored in by_name.items():
        await attempt(name, _vanished(client, stored, observed, tally))
    return tally.summary()


class PartitionPublisher:
    """Keeps one cluster's Partitions in step with Slurm: :meth:`refresh` every ``interval`` seconds,
    or at once after :meth:`poke` (a partition changed, an admin asked).

    Nothing it meets ends :meth:`run`: a failed discovery or an unreachable API is logged as one line
    and the Partitions stay as last published until a refresh succeeds. ``last_summary`` and
    ``last_error`` say how the latest refresh went.
    """

    def __init__(
        self,
        client: Client,
        commands: SlurmCommands,
        cluster: str,
        *,
        config: PartitionConfig | None = None,
        interval: float = 60.0,
    ) -> None:
        self.client = client
        self.commands = commands
        self.cluster = cluster
        self.config = config
        self.interval = interval
        self.last_summary: PublishSummary | None = None
        self.last_error: str | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Refresh now instead of at the end of the interval (a refresh running now is followed by one)."""
        self._poked.set()

    async def refresh(self) -> PublishSummary:
        """One discovery (two Slurm commands), then :func:`publish`; errors propagate."""
        records = await discover_partitions(self.commands, self.config)
        summary = await publish(self.client, records, self.cluster)
        self.last_summary = summary
        return summary

    async def run(self) -> None:
        """Refresh for ever, until cancelled."""
        while True:
            self._poked.clear()  # a poke during the refresh below asks for another one
            try:
                summary = await self.refresh()
            except Exception as exc:  # cancellation is no Exception: it ends the loop
                self._failed(exc)
            else:
                self._published(summary)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.interval)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, PartitionDiscoveryError):
            self.last_error = f"partition discovery failed: {exc}"
        elif isinstance(exc, ApiError):
            self.last_error = f"cannot publish partitions: {exc.message}"
        else:  # a bug: the traceback is worth its lines
            self.last_error = f"publishing partitions failed: {type(exc).__name__}: {exc}"
            log.exception("cluster %s: %s", self.cluster, self.last_error)
            return
        log.warning(
            "cluster %s: %s; the Partitions stay as last published, retrying in %gs",
            self.cluster,
            self.last_error,
            self.interval,
        )

    def _published(self, summary: PublishSummary) -> None:
        if self.last_error is not None:
            log.info("cluster %s: partitions are published again", self.cluster)
            self.last_error = None
        if summary.failed:
            log.warning("cluster %s: Partitions: %s", self.cluster, summary.describe())
        elif summary.changed:
            log.info("cluster %s: Partitions: %s", self.cluster, summary.describe())
        else:
            log.debug("cluster %s: Partitions unchanged (%d)", self.cluster, len(summary.unchanged))
