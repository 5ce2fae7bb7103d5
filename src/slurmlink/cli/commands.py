"""Registry of the CLI's sub-commands."""

from __future__ import annotations

import click


def all_commands() -> list[click.Command]:
    """Every top-level sub-command of ``slurmlink``."""
    from slurmlink.cli import dev_cluster, kubeconfig_cmd, serve, version

    commands: list[click.Command] = [
        version.version,
        serve.serve,
        kubeconfig_cmd.kubeconfig,
        dev_cluster.dev_cluster,
    ]
    return commands
