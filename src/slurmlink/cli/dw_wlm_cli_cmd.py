"""``slurmlink dw-wlm-cli``: Slurm's ``burst_buffer/datawarp`` talking to slurmlink (slurm/datawarp.py)."""

from __future__ import annotations

import click


@click.command(
    "dw-wlm-cli",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dw_wlm_cli(args: tuple[str, ...]) -> None:
    """The dw_wlm_cli (and dwstat) of Slurm's burst_buffer/datawarp plugin, backed by slurmlink.

    \b
    slurmlink dw-wlm-cli [--socket PATH] --function <function> [options]
    slurmlink dw-wlm-cli [--socket PATH] --status <words>      (dwstat, for scontrol show bbstat)

    Functions: pools, show_sessions, show_instances, show_configurations, job_process, setup, data_in,
    real_size, paths, pre_run, post_run, data_out, teardown, create_persistent, with the arguments the
    plugin passes. Each becomes a request to the burst-buffer gateway ('slurmlink slurm gateway') on its
    Unix socket (--socket, else $SLURMLINK_GATEWAY_SOCKET, else /run/slurmlink/slurm-bb.sock), so jobs
    under burst_buffer/datawarp get the same pools and buffers as under burst_buffer/lua. Slurm cannot
    pass --socket: point GetSysState (and GetSysStatus) in burst_buffer.conf at a small wrapper script
    that does (docs/burst-buffers.md). Errors: exit status 1, one line on stderr.
    """
    from slurmlink.slurm import datawarp

    if args in ((), ("--help",), ("-h",)):
        click.echo(click.get_current_context().get_help())
        return
    raise SystemExit(datawarp.main(list(args)))
