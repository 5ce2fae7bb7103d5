"""The admin's partition overrides: a small TOML file in the spirit of the WLM operator's red-box YAML.

Slurm does not know everything a partition should advertise (a CUDA version, a licensed tool), and an
admin may want to show less than Slurm has (hide a partition, promise fewer nodes). One table per
partition, every key optional::

    [partition.GPU_Short]
    extra_features = [{name = "cuda", version = "10", quantity = 1}]
    total_nodes = 4            # what to advertise instead of Slurm's value
    cpus_per_node = 8
    memory_per_node = "32G"    # MiB as a number, or with K/M/G/T
    max_time = "1-00:00:00"    # minutes, a Slurm time, or "UNLIMITED"
    hidden = true              # leave the partition out of what is published

red-box's own keys are accepted so its config can move over: ``additional_features``, ``nodes``,
``cpu_per_node``, ``mem_per_node`` (MB), ``wall_time`` (a Go duration such as ``10h``) and the
``auto_*`` switches (true: take Slurm's value). As in red-box, a numeric value of 0 means "take Slurm's".
Unknown keys are errors, so a typo (red-box's README spells ``additional_feautres``) is not silently lost.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmlink.slurm.limits import LimitError, parse_memory_mib, parse_minutes
from slurmlink.slurm.partitions import ExtraFeature, Partition

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_GO_DURATIONS = re.compile(rf"(?:{_GO_DURATION.pattern})+")
_GO_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_FEATURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Override key → (Partition field, red-box's auto_* switch that cancels it).
_FIELDS = {
    "total_nodes": ("total_nodes", "auto_nodes"),
    "nodes": ("total_nodes", "auto_nodes"),
    "cpus_per_node": ("cpus_per_node", "auto_cpu_per_node"),
    "cpu_per_node": ("cpus_per_node", "auto_cpu_per_node"),
    "memory_per_node": ("memory_per_node", "auto_mem_per_node"),
    "mem_per_node": ("memory_per_node", "auto_mem_per_node"),
    "max_time": ("max_time", "auto_wall_time"),
    "wall_time": ("max_time", "auto_wall_time"),
}
_AUTO = {"auto_nodes", "auto_cpu_per_node", "auto_mem_per_node", "auto_wall_time"}
_OTHER = {"extra_features", "additional_features", "hidden"}


class PartitionConfigError(ValueError):
    """The file is not valid TOML or says something this module does not accept; names file and key."""


@dataclass(frozen=True)
class PartitionOverride:
    """What the admin says about one partition: field values that replace Slurm's, extra features."""

    #: (Partition field, value) pairs; a value of None means "no limit".
    values: tuple[tuple[str, Any], ...] = ()
    extra_features: tuple[ExtraFeature, ...] = ()
    hidden: bool | None = None

    def apply(self, partition: Partition) -> Partition:
        changes: dict[str, Any] = dict(self.values)
        if self.hidden is not None:
            changes["hidden"] = self.hidden
        if self.extra_features:
            changes["extra_features"] = partition.extra_features + self.extra_features
        return dataclasses.replace(partition, **changes)


@dataclass(frozen=True)
class PartitionConfig:
    """Overrides by partition name (Slurm's spelling: names are case-sensitive)."""

    overrides: Mapping[str, PartitionOverride] = dataclasses.field(default_factory=dict)

    def apply(self, partitions: Iterable[Partition]) -> list[Partition]:
        return [self.overrides[p.name].apply(p) if p.name in self.overrides else p for p in partitions]

    def unknown(self, partitions: Iterable[Partition]) -> list[str]:
        """Configured partitions Slurm does not have (a misspelt name, or one removed since)."""
        names = {partition.name for partition in partitions}
        return sorted(name for name in self.overrides if name not in names)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, message: str) -> PartitionConfigError:
        return PartitionConfigError(f"{self.source}: {where}: {message}")

    def positive(self, value: Any, where: str) -> int | None:
        """A count ≥ 0; 0 (red-box's "take Slurm's value") comes back as None."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(where, f"{value!r} is not a whole number ≥ 0")
        return value or None

    def memory(self, value: Any, where: str, bare_unit: str) -> tuple[bool, int | None]:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(where, f"{value!r} is not a memory size")
        if value == 0:
            return False, None
        try:
            return True, parse_memory_mib(f"{value}{bare_unit}" if isinstance(value, int) else value)
        except LimitError as exc:
            raise self.error(where, str(exc)) from None

    def time(self, value: Any, where: str, go_duration: bool) -> tuple[bool, int | None]:
        """A time limit in minutes (None: no limit); red-box's ``wall_time`` may be a Go duration."""
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(where, f"{value!r} is not a time")
        if value in (0, "0"):
            return False, None
        text = str(value).strip()
        if go_duration and _GO_DURATIONS.fullmatch(text):
            seconds = sum(float(n) * _GO_SECONDS[u] for n, u in _GO_DURATION.findall(text))
            return True, int(-(-seconds // 60))
        try:
            return True, parse_minutes(text)
        except LimitError as exc:
            raise self.error(where, str(exc)) from None

    def feature(self, value: Any, where: str) -> ExtraFeature:
        if not isinstance(value, Mapping):
            raise self.error(where, f'{value!r} is not a table such as {{name = "cuda", version = "10"}}')
        unknown = set(value) - {"name", "version", "quantity"}
        if unknown:
            raise self.error(where, f"unknown key(s) {', '.join(sorted(unknown))}: name, version, quantity")
        name = value.get("name")
        if not isinstance(name, str) or not _FEATURE_NAME.match(name):
            raise self.error(where, f"name {name!r} must be letters, digits, '_', '.' or '-'")
        version = value.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int, float))):
            raise self.error(where, f"version {version!r} must be a string")
        version_text = None if version is None else str(version)
        if version_text is not None and not _FEATURE_NAME.match(version_text):
            raise self.error(where, f"version {version_text!r} must be letters, digits, '_', '.' or '-'")
        quantity = value.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise self.error(where, f"quantity {quantity!r} must be a whole number ≥ 0")
        return ExtraFeature(name=name, version=version_text, quantity=quantity)

    def partition(self, name: str, table: Any) -> PartitionOverride:
        where = f"partition.{name}"
        if not isinstance(table, Mapping):
            raise self.error(where, "is not a table")
        unknown = set(table) - set(_FIELDS) - _AUTO - _OTHER
        if unknown:
            known = ", ".join(sorted({*_FIELDS, *_AUTO, *_OTHER}))
            raise self.error(where, f"unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
        for key in _AUTO & set(table):
            if not isinstance(table[key], bool):
                raise self.error(f"{where}.{key}", f"{table[key]!r} is not true or false")
        values: dict[str, Any] = {}
        for key, (target, auto) in _FIELDS.items():
            if key not in table or table.get(auto) is True:
                continue
            if target in values:
                raise self.error(where, f"{target} is given twice (by {key} and another key)")
            at = f"{where}.{key}"
            if target in ("total_nodes", "cpus_per_node"):
                count = self.positive(table[key], at)
                if count is not None:
                    values[target] = count
                continue
            if target == "memory_per_node":
                given, mib = self.memory(table[key], at, "M")
            else:
                given, mib = self.time(table[key], at, go_duration=key == "wall_time")
            if given:
                values[target] = mib
        hidden = table.get("hidden")
        if hidden is not None and not isinstance(hidden, bool):
            raise self.error(f"{where}.hidden", f"{hidden!r} is not true or false")
        features: list[ExtraFeature] = []
        for key in ("extra_features", "additional_features"):
            items = table.get(key, [])
            if not isinstance(items, list):
                raise self.error(f"{where}.{key}", "is not a list of tables")
            features += [self.feature(item, f"{where}.{key}[{i}]") for i, item in enumerate(items)]
        return PartitionOverride(tuple(values.items()), tuple(features), hidden)


def parse_partition_config(text: str, source: str = "partition config") -> PartitionConfig:
    """The overrides in TOML ``text``; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PartitionConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(data) - {"partition"}
    if unknown:
        raise PartitionConfigError(
            f"{source}: unknown table(s) {', '.join(sorted(unknown))}; use [partition.NAME]"
        )
    partitions = data.get("partition", {})
    if not isinstance(partitions, Mapping):
        raise PartitionConfigError(f"{source}: 'partition' must hold tables: [partition.NAME]")
    reader = _Reader(source)
    return PartitionConfig({name: reader.partition(name, table) for name, table in partitions.items()})


def load_partition_config(path: Path) -> PartitionConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PartitionConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_partition_config(text, str(path))
