"""Partition discovery: what each Slurm partition offers and allows, read from Slurm in one batch.

Two commands per refresh, whatever the number of partitions (the WLM operator ran one ``scontrol`` per
partition): ``scontrol --all --oneliner show partition`` (every partition's limits, one line each) and
``sinfo --all --Node`` with an explicit format (every node's CPUs, memory, features, GRES and CPU use, one
line per node and partition). Both are text with fixed formats on purpose: Slurm 22.05 (Debian 12) has
no ``scontrol --json``, and its ``sinfo --json`` lists nodes only, in a schema that later releases change.

Limits are numbers or None, and None always means "no limit": ``UNLIMITED``, ``INFINITE``, ``NONE`` and
Slurm's infinity markers never turn into 0 or NaN (:mod:`slurmlink.slurm.limits`). Times are in minutes,
memory in MiB. Hidden partitions are listed too (``--all``), flagged ``hidden``; a caller publishing
partitions for users leaves them out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slurmlink.slurm.commands import SlurmCommandError, SlurmCommands
from slurmlink.slurm.hostlist import HostlistError, expand_hostlist
from slurmlink.slurm.limits import LimitError, parse_count, parse_memory_mib, parse_minutes
from slurmlink.slurm.oneliner import parse_line

if TYPE_CHECKING:
    from slurmlink.slurm.partition_config import PartitionConfig

#: sinfo's fields per node line: name, partition, CPUs, RealMemory (MiB), features, GRES, and CPUs as
#: allocated/idle/other/total ("other" = down or drained).
SINFO_FORMAT = "%N|%R|%c|%m|%f|%G|%C"
SCONTROL_ARGV = ("scontrol", "--all", "--oneliner", "show", "partition")
SINFO_ARGV = ("sinfo", "--all", "--Node", "--noheader", f"--format={SINFO_FORMAT}")
_NULL = "(null)"


class PartitionDiscoveryError(RuntimeError):
    """Slurm could not be asked, or answered with something these parsers do not understand."""


@dataclass(frozen=True)
class ExtraFeature:
    """A feature the admin declares for a partition (the seed's red-box ``additional_features``), e.g. a
    CUDA version Slurm knows nothing about; published as ``<name>[_<version>]=<quantity>``."""

    name: str
    version: str | None = None
    quantity: int = 1

    @property
    def key(self) -> str:
        return f"{self.name}_{self.version}" if self.version else self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "quantity": self.quantity}


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``sinfo`` reports it."""

    name: str
    cpus: int
    memory: int
    features: tuple[str, ...]
    gres: tuple[str, ...]
    allocated_cpus: int
    idle_cpus: int
    other_cpus: int


@dataclass(frozen=True)
class Partition:
    """One partition: its limits (None = no limit, never 0), its nodes and what they offer.

    Times are whole minutes; memory is MiB. ``cpus_per_node`` and ``memory_per_node`` are the smallest
    among its nodes (what a job can count on wherever it lands). ``features`` are on every node (a
    ``--constraint`` on them always fits); ``features_on_some_nodes`` only on some. ``allowed_*`` None
    means everyone (Slurm's ``ALL``).
    """

    name: str
    state: str
    default: bool
    hidden: bool
    nodes: tuple[str, ...]
    total_nodes: int
    total_cpus: int
    cpus_per_node: int | None
    memory_per_node: int | None
    max_time: int | None
    default_time: int | None
    max_nodes: int | None
    min_nodes: int
    max_cpus_per_node: int | None
    max_memory_per_node: int | None
    max_memory_per_cpu: int | None
    default_memory_per_node: int | None
    default_memory_per_cpu: int | None
    features: tuple[str, ...]
    features_on_some_nodes: tuple[str, ...]
    gres: tuple[str, ...]
    allowed_accounts: tuple[str, ...] | None
    allowed_qos: tuple[str, ...] | None
    allowed_groups: tuple[str, ...] | None
    denied_accounts: tuple[str, ...] = ()
    denied_qos: tuple[str, ...] = ()
    idle_cpus: int = 0
    allocated_cpus: int = 0
    #: CPUs of nodes that are down, drained or otherwise unusable.
    other_cpus: int = 0
    extra_features: tuple[ExtraFeature, ...] = field(default=())

    @property
    def up(self) -> bool:
        """Jobs may be submitted and will start (``State=UP``)."""
        return self.state == "UP"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values; None stays null (no limit)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "extra_features":
                value = [feature.to_json() for feature in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def parse_scontrol_partitions(text: str) -> list[dict[str, str]]:
    """Each partition of ``scontrol --oneliner show partition`` as its raw ``Key: Value`` fields."""
    records = []
    for line in text.splitlines():
        fields = parse_line(line)
        if "PartitionName" in fields:
            records.append(fields)
        elif line.strip() and not line.startswith("No partitions"):
            raise PartitionDiscoveryError(f"unexpected line from scontrol show partition: {line!r}")
    return records


def _list(value: str) -> tuple[str, ...]:
    if value in ("", _NULL):
        return ()
    return tuple(item for item in value.split(",") if item)


def _cpus(text: str, line: str) -> tuple[int, int, int]:
    parts = text.split("/")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise PartitionDiscoveryError(f"sinfo CPUs {text!r} are not A/I/O/T in line {line!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_sinfo_nodes(text: str) -> dict[str, NodeInfo]:
    """Every node of ``sinfo --Node --format=`` :data:`SINFO_FORMAT`, once (sinfo repeats a node per
    partition)."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 7:
            raise PartitionDiscoveryError(f"unexpected line from sinfo: {line!r}")
        name, _partition, cpus, memory, features, gres, cpu_use = parts
        if name in nodes:
            continue
        try:
            cpu_count = parse_count(cpus)
            memory_mib = parse_memory_mib(memory)
        except LimitError as exc:
            raise PartitionDiscoveryError(f"sinfo line {line!r}: {exc}") from None
        allocated, idle, other = _cpus(cpu_use, line)
        nodes[name] = NodeInfo(
            name=name,
            cpus=cpu_count or 0,
            memory=memory_mib or 0,
            features=_list(features),
            gres=_list(gres),
            allocated_cpus=allocated,
            idle_cpus=idle,
            other_cpus=other,
        )
    return nodes


def _access(fields: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    value = fields.get(key, "ALL")
    return None if value.upper() == "ALL" else _list(value)


def _limit(fields: Mapping[str, str], key: str, parse: Any, name: str) -> Any:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return parse(value)
    except LimitError as exc:
        raise PartitionDiscoveryError(f"partition {name}: {key}: {exc}") from None


def _ordered_union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return tuple(seen)


def build_partition(fields: Mapping[str, str], nodes: Mapping[str, NodeInfo]) -> Partition:
    """One :class:`Partition` from its ``scontrol`` fields and the nodes ``sinfo`` reported."""
    name = fields["PartitionName"]
    try:
        node_names = tuple(expand_hostlist(fields.get("Nodes", "")))
    except HostlistError as exc:
        raise PartitionDiscoveryError(f"partition {name}: Nodes: {exc}") from None
    known = [nodes[node] for node in node_names if node in nodes]
    common = set.intersection(*(set(node.features) for node in known)) if known else set()
    all_features = _ordered_union(node.features for node in known)

    def number(key: str, default: int = 0) -> int:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else default

    return Partition(
        name=name,
        state=fields.get("State", "UNKNOWN").upper(),
        default=fields.get("Default", "NO").upper() == "YES",
        hidden=fields.get("Hidden", "NO").upper() == "YES",
        nodes=node_names,
        total_nodes=number("TotalNodes", len(node_names)),
        total_cpus=number("TotalCPUs", sum(node.cpus for node in known)),
        cpus_per_node=min((node.cpus for node in known), default=None),
        memory_per_node=min((node.memory for node in known), default=None),
        max_time=_limit(fields, "MaxTime", parse_minutes, name),
        default_time=_limit(fields, "DefaultTime", parse_minutes, name),
        max_nodes=_limit(fields, "MaxNodes", parse_count, name),
        min_nodes=number("MinNodes"),
        max_cpus_per_node=_limit(fields, "MaxCPUsPerNode", parse_count, name),
        max_memory_per_node=_limit(fields, "MaxMemPerNode", parse_memory_mib, name),
        max_memory_per_cpu=_limit(fields, "MaxMemPerCPU", parse_memory_mib, name),
        default_memory_per_node=_limit(fields, "DefMemPerNode", parse_memory_mib, name),
        default_memory_per_cpu=_limit(fields, "DefMemPerCPU", parse_memory_mib, name),
        features=tuple(feature for feature in all_features if feature in common),
        features_on_some_nodes=tuple(feature for feature in all_features if feature not in common),
        gres=_ordered_union(node.gres for node in known),
        allowed_accounts=_access(fields, "AllowAccounts"),
        allowed_qos=_access(fields, "AllowQos"),
        allowed_groups=_access(fields, "AllowGroups"),
        denied_accounts=_list(fields.get("DenyAccounts", "")),
        denied_qos=_list(fields.get("DenyQos", "")),
        idle_cpus=sum(node.idle_cpus for node in known),
        allocated_cpus=sum(node.allocated_cpus for node in known),
        other_cpus=sum(node.other_cpus for node in known),
    )


def parse_partitions(scontrol_text: str, sinfo_text: str) -> list[Partition]:
    """Partitions, in Slurm's order, from the outputs of :data:`SCONTROL_ARGV` and :data:`SINFO_ARGV`."""
    nodes = parse_sinfo_nodes(sinfo_text)
    return [build_partition(fields, nodes) for fields in parse_scontrol_partitions(scontrol_text)]


async def _output(commands: SlurmCommands, argv: Sequence[str]) -> str:
    try:
        result = await commands.run(*argv)
    except SlurmCommandError as exc:
        raise PartitionDiscoveryError(str(exc)) from exc
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise PartitionDiscoveryError(f"{' '.join(argv[:1])} failed: {message}")
    return result.stdout


async def discover_partitions(
    commands: SlurmCommands, config: PartitionConfig | None = None
) -> list[Partition]:
    """Every partition Slurm has, with the admin's overrides from ``config`` applied.

    Runs :data:`SCONTROL_ARGV` and :data:`SINFO_ARGV` concurrently: two processes per refresh.
    """
    scontrol_text, sinfo_text = await asyncio.gather(
        _output(commands, SCONTROL_ARGV), _output(commands, SINFO_ARGV)
    )
    partitions = parse_partitions(scontrol_text, sinfo_text)
    return config.apply(partitions) if config is not None else partitions


def discover_partitions_sync(
    slurm_conf: Path | None = None, *, config: PartitionConfig | None = None, timeout: float = 30.0
) -> list[Partition]:
    """:func:`discover_partitions` for command-line use (no event loop running)."""
    return asyncio.run(discover_partitions(SlurmCommands(slurm_conf, timeout=timeout), config))


def default_partition(partitions: Iterable[Partition]) -> Partition | None:
    """The partition a job without ``--partition`` goes to (Slurm's ``Default=YES``), if any."""
    return next((partition for partition in partitions if partition.default), None)
