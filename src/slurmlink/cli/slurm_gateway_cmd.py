"""``slurmlink slurm gateway``: the local daemon the burst_buffer.lua plugin talks to (placeholder)."""

from __future__ import annotations

import click


@click.command("gateway")
def gateway() -> None:
    """Run the burst buffer gateway (being written)."""
    raise click.ClickException("not implemented yet")
