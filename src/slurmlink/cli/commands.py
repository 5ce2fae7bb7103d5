"""Registry of the CLI's sub-commands."""

from __future__ import annotations

import click


def all_commands() -> list[click.Command]:
    """Every top-level sub-command of ``slurmlink``."""
    from slurmlink.cli import (
        agent_cmd,
        bank_cmd,
        bridge_cmd,
        buffers_cmd,
        controller_cmd,
        dev_cluster,
        dw_wlm_cli_cmd,
        kubeconfig_cmd,
        quickstart_cmd,
        resources_cmd,
        serve,
        slurm_cmd,
        storage_cmd,
        version,
    )

    commands: list[click.Command] = [
        version.version,
        serve.serve,
        kubeconfig_cmd.kubeconfig,
        dev_cluster.dev_cluster,
        slurm_cmd.slurm,
        dw_wlm_cli_cmd.dw_wlm_cli,
        quickstart_cmd.quickstart,
        controller_cmd.controller,
        agent_cmd.agent,
        storage_cmd.storage,
        buffers_cmd.buffers,
        bank_cmd.bank,
        bank_cmd.user_balance,
        resources_cmd.get,
        resources_cmd.describe,
        resources_cmd.watch,
        bridge_cmd.sj,
        bridge_cmd.logs,
    ]
    return commands
