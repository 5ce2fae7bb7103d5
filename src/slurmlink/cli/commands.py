"""Registry of the CLI's sub-commands."""

from __future__ import annotations

import click


def all_commands() -> list[click.Command]:
    """Every top-level sub-command of ``slurmlink``."""
    from slurmlink.cli import (
        controller_cmd,
        dev_cluster,
        kubeconfig_cmd,
        quickstart_cmd,
        resources_cmd,
        serve,
        slurm_cmd,
        version,
    )

    commands: list[click.Command] = [
        version.version,
        serve.serve,
        kubeconfig_cmd.kubeconfig,
        dev_cluster.dev_cluster,
        slurm_cmd.slurm,
        quickstart_cmd.quickstart,
        controller_cmd.controller,
        resources_cmd.get,
        resources_cmd.describe,
        resources_cmd.watch,
    ]
    return commands
