"""``slurmlink version``."""

from __future__ import annotations

import click

from slurmlink import __version__


@click.command()
def version() -> None:
    """Print the slurmlink version."""
    click.echo(f"slurmlink {__version__}")
