"""The ``slurmlink`` command: one click group, sub-commands registered from their own modules."""

from __future__ import annotations

import click

from slurmlink import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="slurmlink")
def main() -> None:
    """slurmlink: Slurm control plane (Data Workflow Services, burst buffers, banking, job bridge).

    Serves its resources in the Kubernetes REST dialect, so kubectl works against it.
    """


def _register() -> None:
    """Attach sub-commands; each lives in its own module so the group stays small."""
    from slurmlink.cli import commands

    for command in commands.all_commands():
        main.add_command(command)


_register()


if __name__ == "__main__":
    # Run as `python -m slurmlink.cli.main` (scripts/quickstart, the quick start's server): same usage text.
    main(prog_name="slurmlink")
