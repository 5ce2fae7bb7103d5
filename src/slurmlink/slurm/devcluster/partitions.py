"""The dev cluster's partitions: ``--partition NAME[:Key=Value,...]`` read, checked and rendered.

A spec names a partition and a few of slurm.conf's partition keys, checked here so that a typo fails
``up`` with a clear message instead of leaving slurmctld unable to start::

    GPU_Short:Nodes=compute2,MaxTime=30,MaxNodes=1,Features=gpu
    long:MaxTime=UNLIMITED,AllowAccounts=physics,chemistry

Values may contain commas (node, account and QOS lists): a word without ``=`` continues the previous value.
Without any spec the cluster has the one partition it always had, ``debug`` on every compute node,
rendered to the same slurm.conf line as before, so an existing cluster is not even reconfigured.

Two things Slurm does that shape the rendering: ``MaxMemPerNode=UNLIMITED`` in slurm.conf comes out as
``MaxMemPerCPU=9223372036854775807`` (22.05 takes it for its 64-bit infinity with the per-CPU bit set),
so a memory limit of UNLIMITED is written by leaving the key out; and node features go on the
``NodeName`` lines (a partition's ``Features`` are given to each of its nodes, so a node in two partitions
has the features of both).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from slurmlink.slurm.devcluster.errors import DevClusterError
from slurmlink.slurm.devcluster.layout import PARTITION
from slurmlink.slurm.hostlist import HostlistError, expand_hostlist
from slurmlink.slurm.limits import LimitError, parse_count, parse_memory_mib, parse_minutes

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
STATES = ("UP", "DOWN", "DRAIN", "INACTIVE")


class PartitionSpecError(DevClusterError):
    """A ``--partition`` value (or a saved one) that cannot become a slurm.conf partition line."""


@dataclass(frozen=True)
class PartitionSpec:
    """One dev cluster partition. Times are minutes, memory MiB; None means no limit (or not set)."""

    name: str
    #: None: every compute node; a number: the first N compute nodes; else these node names.
    nodes: int | tuple[str, ...] | None = None
    max_time: int | None = None
    default_time: int | None = None
    max_nodes: int | None = None
    max_mem_per_node: int | None = None
    max_mem_per_cpu: int | None = None
    def_mem_per_node: int | None = None
    def_mem_per_cpu: int | None = None
    #: True/False when the spec says Default=YES/NO; None: the first partition is the default.
    default: bool | None = None
    state: str = "UP"
    #: Hidden=YES: left out of sinfo/squeue for users (``--all`` shows it).
    hidden: bool = False
    allow_accounts: tuple[str, ...] | None = None
    allow_qos: tuple[str, ...] | None = None
    #: Node features given to this partition's nodes (``--constraint`` can pick them).
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """``NAME[:Key=Value,...]``; keys as in slurm.conf, in any case."""
        name, _, rest = text.strip().partition(":")
        spec = cls(name=_check_name(name))
        given: dict[str, str] = {}
        last: str | None = None
        for word in rest.split(",") if rest.strip() else []:
            key, sep, value = word.partition("=")
            if not sep:
                if last is None:
                    raise PartitionSpecError(f"partition {name}: {word!r} is not Key=Value")
                given[last] += "," + word.strip()
                continue
            canonical = _KEY_NAMES.get(key.strip().lower())
            if canonical is None:
                raise PartitionSpecError(
                    f"partition {name}: unknown key {key.strip()!r}; known: {', '.join(_SETTERS)}"
                )
            if canonical in given:
                raise PartitionSpecError(f"partition {name}: {canonical} is given twice")
            given[canonical] = value.strip()
            last = canonical
        for key, value in given.items():
            if not value:
                raise PartitionSpecError(f"partition {name}: {key} has no value")
            try:
                spec = _SETTERS[key](spec, value)
            except (LimitError, HostlistError) as exc:
                raise PartitionSpecError(f"partition {name}: {key}: {exc}") from None
        spec.check()
        return spec

    def check(self) -> None:
        """Limits that contradict each other."""
        if self.max_mem_per_node is not None and self.max_mem_per_cpu is not None:
            raise PartitionSpecError(f"partition {self.name}: give MaxMemPerNode or MaxMemPerCPU, not both")
        if self.def_mem_per_node is not None and self.def_mem_per_cpu is not None:
            raise PartitionSpecError(f"partition {self.name}: give DefMemPerNode or DefMemPerCPU, not both")
        for default, limit, what in [
            (self.default_time, self.max_time, "DefaultTime exceeds MaxTime"),
            (self.def_mem_per_node, self.max_mem_per_node, "DefMemPerNode exceeds MaxMemPerNode"),
            (self.def_mem_per_cpu, self.max_mem_per_cpu, "DefMemPerCPU exceeds MaxMemPerCPU"),
        ]:
            if default is not None and limit is not None and default > limit:
                raise PartitionSpecError(f"partition {self.name}: {what} ({default} > {limit})")

    def to_text(self) -> str:
        """The canonical spec: :meth:`parse` reads it back to an equal spec (saved in the state dir)."""
        pairs = [f"{key}={value}" for key, value in self._settings()]
        return f"{self.name}:{','.join(pairs)}" if pairs else self.name

    def _settings(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.nodes is not None:
            out.append(("Nodes", str(self.nodes) if isinstance(self.nodes, int) else ",".join(self.nodes)))
        if self.default is not None:
            out.append(("Default", "YES" if self.default else "NO"))
        for key, value in [
            ("DefaultTime", self.default_time),
            ("MaxTime", self.max_time),
            ("MaxNodes", self.max_nodes),
            ("MaxMemPerNode", self.max_mem_per_node),
            ("MaxMemPerCPU", self.max_mem_per_cpu),
            ("DefMemPerNode", self.def_mem_per_node),
            ("DefMemPerCPU", self.def_mem_per_cpu),
        ]:
            if value is not None:
                out.append((key, str(value)))
        if self.state != "UP":
            out.append(("State", self.state))
        if self.hidden:
            out.append(("Hidden", "YES"))
        for key, names in [("AllowAccounts", self.allow_accounts), ("AllowQos", self.allow_qos)]:
            if names is not None:
                out.append((key, ",".join(names)))
        if self.features:
            out.append(("Features", ",".join(self.features)))
        return out

    def node_names(self, compute_nodes: Sequence[str]) -> list[str]:
        """Its nodes among the cluster's compute nodes; an error names what does not fit."""
        if self.nodes is None:
            return list(compute_nodes)
        if isinstance(self.nodes, int):
            if self.nodes > len(compute_nodes):
                raise PartitionSpecError(
                    f"partition {self.name}: Nodes={self.nodes}, but the cluster has "
                    f"{len(compute_nodes)} compute node(s) (raise --compute-nodes)"
                )
            return list(compute_nodes[: self.nodes])
        unknown = [node for node in self.nodes if node not in compute_nodes]
        if unknown:
            raise PartitionSpecError(
                f"partition {self.name}: no compute node {', '.join(unknown)} "
                f"(the compute nodes are {', '.join(compute_nodes)})"
            )
        return list(self.nodes)

    def effective_default_time(self, fallback: int | None) -> int | None:
        """Its DefaultTime, else ``fallback`` capped at its MaxTime (minutes; None: none)."""
        if self.default_time is not None or fallback is None:
            return self.default_time
        return fallback if self.max_time is None else min(fallback, self.max_time)

    def conf_line(self, compute_nodes: Sequence[str], *, default: bool, default_time: int | None) -> str:
        """Its ``PartitionName=`` line; ``default_time`` applies when the spec sets no DefaultTime (capped
        at its MaxTime)."""
        nodes = "ALL" if self.nodes is None else ",".join(self.node_names(compute_nodes))
        words = [f"PartitionName={self.name}", f"Nodes={nodes}"]
        if default:
            words.append("Default=YES")
        effective = self.effective_default_time(default_time)
        if effective is not None:
            words.append(f"DefaultTime={effective}")
        words.append(f"MaxTime={'INFINITE' if self.max_time is None else self.max_time}")
        for key, value in [
            ("MaxNodes", self.max_nodes),
            ("MaxMemPerNode", self.max_mem_per_node),
            ("MaxMemPerCPU", self.max_mem_per_cpu),
            ("DefMemPerNode", self.def_mem_per_node),
            ("DefMemPerCPU", self.def_mem_per_cpu),
        ]:
            if value is not None:
                words.append(f"{key}={value}")
        for key, names in [("AllowAccounts", self.allow_accounts), ("AllowQos", self.allow_qos)]:
            if names is not None:
                words.append(f"{key}={','.join(names)}")
        if self.hidden:
            words.append("Hidden=YES")
        words.append(f"State={self.state}")
        return " ".join(words)


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise PartitionSpecError(
            f"partition name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (not starting with '.' "
            "or '-')"
        )
    if name.upper() == "DEFAULT":
        raise PartitionSpecError("DEFAULT is not a partition name (slurm.conf's line of defaults)")
    return name


def _names(value: str, what: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in value.split(",") if item.strip())
    bad = [name for name in names if not _WORD.match(name)]
    if bad or not names:
        raise LimitError(f"{', '.join(bad) or value!r}: {what} must be letters, digits, '_', '.' or '-'")
    return tuple(dict.fromkeys(names))


def _access(value: str, what: str) -> tuple[str, ...] | None:
    return None if value.upper() == "ALL" else _names(value, what)


def _nodes(value: str) -> int | tuple[str, ...] | None:
    if value.upper() == "ALL":
        return None
    if value.isdigit():
        if int(value) < 1:
            raise LimitError("a partition needs at least one node")
        return int(value)
    names = tuple(dict.fromkeys(expand_hostlist(value)))
    for name in names:
        if not _WORD.match(name):
            raise LimitError(f"{name!r} is not a node name")
    return names


def _time(value: str, unlimited_ok: bool) -> int | None:
    minutes = parse_minutes(value)
    if minutes is None and not unlimited_ok:
        raise LimitError(f"{value!r}: give a time (minutes or D-HH:MM:SS)")
    return minutes


def _positive(value: str) -> int | None:
    count = parse_count(value)
    if count == 0:
        raise LimitError("0 is not a limit: give a number ≥ 1 or UNLIMITED")
    return count


def _choice(value: str, accepted: Iterable[str]) -> str:
    upper = value.upper()
    if upper not in accepted:
        raise LimitError(f"{value!r} is not one of {', '.join(accepted)}")
    return upper


_SETTERS: dict[str, Callable[[PartitionSpec, str], PartitionSpec]] = {
    "Nodes": lambda s, v: replace(s, nodes=_nodes(v)),
    "MaxTime": lambda s, v: replace(s, max_time=_time(v, unlimited_ok=True)),
    "DefaultTime": lambda s, v: replace(s, default_time=_time(v, unlimited_ok=False)),
    "MaxNodes": lambda s, v: replace(s, max_nodes=_positive(v)),
    "MaxMemPerNode": lambda s, v: replace(s, max_mem_per_node=parse_memory_mib(v)),
    "MaxMemPerCPU": lambda s, v: replace(s, max_mem_per_cpu=parse_memory_mib(v)),
    "DefMemPerNode": lambda s, v: replace(s, def_mem_per_node=parse_memory_mib(v)),
    "DefMemPerCPU": lambda s, v: replace(s, def_mem_per_cpu=parse_memory_mib(v)),
    "Default": lambda s, v: replace(s, default=_choice(v, ("YES", "NO")) == "YES"),
    "State": lambda s, v: replace(s, state=_choice(v, STATES)),
    "Hidden": lambda s, v: replace(s, hidden=_choice(v, ("YES", "NO")) == "YES"),
    "AllowAccounts": lambda s, v: replace(s, allow_accounts=_access(v, "account names")),
    "AllowQos": lambda s, v: replace(s, allow_qos=_access(v, "QOS names")),
    "Features": lambda s, v: replace(s, features=_names(v, "features")),
}
_KEY_NAMES = {key.lower(): key for key in _SETTERS}


def default_partitions() -> tuple[PartitionSpec, ...]:
    """What a cluster has when no ``--partition`` was ever given: ``debug`` on every compute node."""
    return (PartitionSpec(PARTITION),)


def parse_partitions(texts: Iterable[str]) -> tuple[PartitionSpec, ...]:
    """Specs from ``--partition`` values (or the saved ones), checked together."""
    specs = tuple(PartitionSpec.parse(text) for text in texts)
    check_partitions(specs)
    return specs


def check_partitions(specs: Sequence[PartitionSpec], compute_nodes: Sequence[str] | None = None) -> None:
    """At least one partition, unique names (case-insensitively, as users type them), at most one
    Default=YES; with ``compute_nodes``, every partition's nodes exist."""
    if not specs:
        raise PartitionSpecError("a cluster needs at least one partition")
    seen: dict[str, str] = {}
    for spec in specs:
        other = seen.get(spec.name.lower())
        if other is not None:
            raise PartitionSpecError(f"partition names must differ (also in case): {other}, {spec.name}")
        seen[spec.name.lower()] = spec.name
    defaults = [spec.name for spec in specs if spec.default]
    if len(defaults) > 1:
        raise PartitionSpecError(f"only one partition can say Default=YES: {', '.join(defaults)}")
    if compute_nodes is not None:
        for spec in specs:
            spec.node_names(compute_nodes)


def default_partition_name(specs: Sequence[PartitionSpec]) -> str | None:
    """The default: the one saying Default=YES, else the first unless it says Default=NO."""
    for spec in specs:
        if spec.default:
            return spec.name
    return specs[0].name if specs and specs[0].default is None else None


def partition_lines(
    specs: Sequence[PartitionSpec], compute_nodes: Sequence[str], default_time: int | None = None
) -> list[str]:
    """slurm.conf's ``PartitionName=`` lines, in the order given."""
    check_partitions(specs, compute_nodes)
    default = default_partition_name(specs)
    return [
        spec.conf_line(compute_nodes, default=spec.name == default, default_time=default_time)
        for spec in specs
    ]


def node_features(specs: Sequence[PartitionSpec], compute_nodes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each compute node's features: those of every partition it is in, in order, without repeats."""
    found: dict[str, dict[str, None]] = {node: {} for node in compute_nodes}
    for spec in specs:
        for node in spec.node_names(compute_nodes):
            found[node].update(dict.fromkeys(spec.features))
    return {node: tuple(features) for node, features in found.items() if features}
