"""``slurmlink slurm``: install the burst buffer plugin into a Slurm config directory, run its gateway."""

from __future__ import annotations

from pathlib import Path

import click

from slurmlink.cli.slurm_gateway_cmd import gateway
from slurmlink.cli.slurm_partitions_cmd import partitions

#: Shown in --help; the value itself comes from slurmlink.slurm.plugin at run time.
_SOCKET_HELP_DEFAULT = "/run/slurmlink/slurm-bb.sock"


def _default_socket() -> str:
    from slurmlink.slurm.plugin import DEFAULT_SOCKET_PATH

    return str(DEFAULT_SOCKET_PATH)


def _progress(message: str) -> None:
    click.echo(f"[slurm install] {message}", err=True)


@click.group("slurm")
def slurm() -> None:
    """Slurm integration: install the burst buffer plugin, run its gateway, show the partitions.

    The plugin is Slurm's stock burst_buffer/lua with slurmlink's thin burst_buffer.lua, which forwards every
    callback over a Unix socket to the gateway daemon; the gateway turns them into DWS Workflows.
    """


@slurm.command("install")
@click.option(
    "--conf-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    envvar="SLURMLINK_SLURM_CONF_DIR",
    show_envvar=True,
    help="Slurm's configuration directory, the one holding slurm.conf (usually /etc/slurm). The plugin "
    "reads burst_buffer.lua and burst_buffer.conf from there.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=_default_socket,
    show_default=_SOCKET_HELP_DEFAULT,
    help="Unix socket of the gateway, rendered into burst_buffer.lua; give the gateway the same path.",
)
@click.option(
    "--kubeconfig",
    "kubeconfig_source",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Copy this kubeconfig (credentials of role workload-manager) as CONF_DIR/slurm-dws.kubeconfig.",
)
@click.option(
    "--server-state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Instead of --kubeconfig: issue the plugin's credentials from the CA in this slurmlink server "
    "state directory (run on the server host). Re-runs keep a still valid kubeconfig.",
)
@click.option(
    "--user",
    default="slurm-dws",
    show_default=True,
    help="User name (certificate CN) of issued credentials; with --server-state-dir.",
)
@click.option(
    "--namespace",
    default="slurm",
    show_default=True,
    help="Namespace of the Workflows, the issued kubeconfig's context namespace; with --server-state-dir.",
)
@click.option(
    "--slurm-api",
    default=None,
    metavar="MAJOR.MINOR",
    help="Slurm version whose burst_buffer/lua calling convention to use, e.g. 22.05 or 23.02 "
    "(default: from 'slurmctld -V', else 22.05).",
)
@click.option(
    "--sync-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds job_process and paths (which run inside slurmctld) wait for the gateway at most "
    "(default: the plugin's, 5).",
)
@click.option(
    "--connect-retry",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds asynchronous callbacks keep retrying to reach a restarting gateway (default: the "
    "plugin's, 10).",
)
@click.option(
    "--enable",
    is_flag=True,
    help="Also append BurstBufferType=burst_buffer/lua to CONF_DIR/slurm.conf if it sets no "
    "BurstBufferType (slurmctld must then be restarted).",
)
def install(
    conf_dir: Path,
    socket_path: Path,
    kubeconfig_source: Path | None,
    server_state_dir: Path | None,
    user: str,
    namespace: str,
    slurm_api: str | None,
    sync_timeout: float | None,
    connect_retry: float | None,
    enable: bool,
) -> None:
    """Install slurmlink's burst buffer plugin next to slurm.conf.

    Writes CONF_DIR/burst_buffer.lua, CONF_DIR/burst_buffer.conf and CONF_DIR/slurm-dws.kubeconfig
    (mode 0600), atomically. Existing files slurmlink did not write are kept as NAME.bak-TIMESTAMP. The
    kubeconfig is copied (--kubeconfig) or issued (--server-state-dir); on re-runs the installed one is kept
    when neither is given. Running it again with the same options changes nothing.

    \b
    Examples:
      slurmlink slurm install --conf-dir /etc/slurm --kubeconfig ./slurm-dws.kubeconfig --enable
      slurmlink slurm install --conf-dir /etc/slurm --server-state-dir /var/lib/slurmlink
    """
    from slurmlink.slurm.install import InstallError, install_plugin

    try:
        result = install_plugin(
            conf_dir,
            socket_path=socket_path,
            kubeconfig_source=kubeconfig_source,
            server_state_dir=server_state_dir,
            user=user,
            namespace=namespace,
            slurm_api=slurm_api,
            sync_timeout=sync_timeout,
            connect_retry=connect_retry,
            enable=enable,
            log=_progress,
        )
    except InstallError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "Installed" if result.changed else "Already installed:"
    click.echo(f"{verb} slurmlink's burst buffer plugin in {result.conf_dir} (Slurm API {result.slurm_api}).")
    for path in result.written:
        click.echo(f"  wrote     {path}")
    for path in result.unchanged:
        click.echo(f"  unchanged {path}")
    for path in result.backups:
        click.echo(f"  backup    {path}")
    for note in result.notes:
        click.echo(f"Note: {note}")
    click.echo("Next steps:")
    for number, step in enumerate(result.next_steps(), 1):
        click.echo(f"  {number}. {step}")


slurm.add_command(gateway)
slurm.add_command(partitions)
