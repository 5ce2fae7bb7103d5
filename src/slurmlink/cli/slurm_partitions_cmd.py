"""``slurmlink slurm partitions``: what partition discovery reads from Slurm, for admins to check."""

from __future__ import annotations

import json
from pathlib import Path

import click

from slurmlink.slurm.partitions import Partition

UNLIMITED = "UNLIMITED"


def _time(minutes: int | None) -> str:
    """As Slurm prints limits: ``[D-]HH:MM:SS``."""
    if minutes is None:
        return UNLIMITED
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _mib(value: int | None) -> str:
    return UNLIMITED if value is None else f"{value}M"


def _names(values: tuple[str, ...] | None) -> str:
    return "ALL" if values is None else ",".join(values) or "-"


def _memory_limit(partition: Partition) -> str:
    if partition.max_memory_per_node is not None:
        return f"{partition.max_memory_per_node}M/node"
    if partition.max_memory_per_cpu is not None:
        return f"{partition.max_memory_per_cpu}M/cpu"
    return UNLIMITED


def _features(partition: Partition) -> str:
    words = [*partition.features, *(f"{f}(some)" for f in partition.features_on_some_nodes)]
    words += [f"{f.key}={f.quantity}(extra)" for f in partition.extra_features]
    return ",".join(words) or "-"


def table_rows(partitions: list[Partition]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the table (None limits shown as UNLIMITED, never 0)."""
    headers = [
        "PARTITION",
        "STATE",
        "NODES",
        "CPUS/NODE",
        "MEM/NODE",
        "MAXTIME",
        "DEFAULTTIME",
        "MAXNODES",
        "MAXMEM",
        "CPUS(A/I/O)",
        "FEATURES",
        "GRES",
        "ACCOUNTS",
        "QOS",
    ]
    rows = []
    for p in partitions:
        state = p.state + (" hidden" if p.hidden else "")
        rows.append(
            [
                p.name + ("*" if p.default else ""),
                state,
                str(p.total_nodes),
                "-" if p.cpus_per_node is None else str(p.cpus_per_node),
                "-" if p.memory_per_node is None else f"{p.memory_per_node}M",
                _time(p.max_time),
                "NONE" if p.default_time is None else _time(p.default_time),
                UNLIMITED if p.max_nodes is None else str(p.max_nodes),
                _memory_limit(p),
                f"{p.allocated_cpus}/{p.idle_cpus}/{p.other_cpus}",
                _features(p),
                ",".join(p.gres) or "-",
                _names(p.allowed_accounts),
                _names(p.allowed_qos),
            ]
        )
    return headers, rows


@click.command("partitions")
@click.option("--json", "as_json", is_flag=True, help="One JSON list; null means no limit.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="SLURMLINK_PARTITION_CONFIG",
    show_envvar=True,
    help="The admin's partition overrides (TOML: [partition.NAME] extra_features, hidden, total_nodes, "
    "cpus_per_node, memory_per_node, max_time), applied to what Slurm reports.",
)
@click.option(
    "--slurm-conf",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="slurm.conf of the cluster to ask (default: $SLURM_CONF, else Slurm's own).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=30, show_default=True, help="Seconds per command."
)
def partitions(as_json: bool, config_path: Path | None, slurm_conf: Path | None, timeout: float) -> None:
    """Show the partitions as the job bridge discovers them: limits, nodes, CPUs, features, access.

    Two Slurm commands, whatever the number of partitions: 'scontrol --all --oneliner show partition' and
    'sinfo --all --Node'. The default partition is marked '*'; CPUs are allocated/idle/other (down or
    drained); FEATURES marks those on some nodes only '(some)' and the admin's '(extra)'.
    """
    from slurmlink.slurm.partition_config import PartitionConfigError, load_partition_config
    from slurmlink.slurm.partitions import PartitionDiscoveryError, discover_partitions_sync

    try:
        config = load_partition_config(config_path) if config_path is not None else None
        found = discover_partitions_sync(slurm_conf, config=config, timeout=timeout)
    except (PartitionConfigError, PartitionDiscoveryError) as exc:
        raise click.ClickException(str(exc)) from exc
    if config is not None:
        for name in config.unknown(found):
            click.echo(
                f"warning: {config_path} configures partition {name!r}, which Slurm does not have", err=True
            )
    if as_json:
        click.echo(json.dumps([partition.to_json() for partition in found], indent=2))
        return
    from rich.table import Table

    from slurmlink.cli.output import Out

    headers, rows = table_rows(found)
    table = Table(box=None, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Out().print(table)
