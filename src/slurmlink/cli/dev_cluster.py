"""``slurmlink dev-cluster``: a local single-node Slurm for tests and the quick start."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from slurmlink.slurm.devcluster import (
    DEFAULT_CTLD_PORT,
    DEFAULT_JOB_USER,
    DEFAULT_SLURMD_PORT,
    DEFAULT_STATE_DIR,
    DevCluster,
    DevClusterError,
    GatewaySetup,
    gateway_healthy,
    placeholder_burst_buffer,
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _progress(message: str) -> None:
    # stderr, so stdout stays clean for "eval $(slurmlink dev-cluster env)"-style use.
    click.echo(f"[dev-cluster] {message}", err=True)


def _common_options(func: _F) -> _F:
    """Options every sub-command shares; unset ports/user fall back to what the last ``up`` saved."""
    options = [
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=str(DEFAULT_STATE_DIR),
            show_default=True,
            envvar="SLURMLINK_DEV_CLUSTER_DIR",
            show_envvar=True,
            help="Directory holding the cluster's config, munge key and socket, state, logs and pid files. "
            "It and its parents must be searchable by other users (the job user reads slurm.conf there).",
        ),
        click.option(
            "--ctld-port",
            type=click.IntRange(1, 65535),
            default=None,
            help=f"slurmctld port (default: the one saved by the last 'up', else {DEFAULT_CTLD_PORT}).",
        ),
        click.option(
            "--slurmd-port",
            type=click.IntRange(1, 65535),
            default=None,
            help=f"slurmd port (default: the one saved by the last 'up', else {DEFAULT_SLURMD_PORT}).",
        ),
        click.option(
            "--job-user",
            default=None,
            help=f"Unprivileged user that submits jobs; root may not use burst buffers "
            f"(default: saved by the last 'up', else {DEFAULT_JOB_USER}).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cluster(
    state_dir: Path, ctld_port: int | None, slurmd_port: int | None, job_user: str | None
) -> DevCluster:
    return DevCluster.from_state_dir(
        state_dir, log=_progress, ctld_port=ctld_port, slurmd_port=slurmd_port, job_user=job_user
    )


@click.group("dev-cluster")
def dev_cluster() -> None:
    """Run a local single-node Slurm (Debian's 22.05 packages) for tests and the quick start.

    Everything lives in one state directory: slurm.conf, a private munge daemon and key, Slurm state, spool,
    logs and pid files. The system's /etc/slurm and munge are left alone. Needs root (the daemons run as
    root); jobs that use burst buffers are submitted as the unprivileged job user.
    """


@dev_cluster.command()
@_common_options
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Run slurmlink's real burst buffer plugin: install it with this kubeconfig (role workload-manager, "
    "e.g. from 'slurmlink kubeconfig --user slurm-dws --role workload-manager --namespace slurm') and start "
    "its gateway. Remembered: later 'up's without it keep using it.",
)
@click.option(
    "--gateway-arg",
    "gateway_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for 'slurmlink slurm gateway' (repeatable), e.g. --gateway-arg=--transient-grace "
    "--gateway-arg=5.",
)
@click.option(
    "--no-burst-buffer",
    is_flag=True,
    help="Do not enable BurstBufferType=burst_buffer/lua. Without it, and without a kubeconfig given now or "
    "by an earlier 'up', a do-nothing placeholder plugin is installed so '#DW' jobs run.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for the node to become idle.",
)
def up(
    state_dir: Path,
    ctld_port: int | None,
    slurmd_port: int | None,
    job_user: str | None,
    kubeconfig: Path | None,
    gateway_args: tuple[str, ...],
    no_burst_buffer: bool,
    wait_timeout: float,
) -> None:
    """Start the cluster, or refresh a running one, and wait until its node is idle.

    Installs the Slurm and munge packages with apt-get and creates the job user when missing. Running it
    again is cheap: running daemons are kept and only reconfigured (or restarted) if the config changed.
    With --kubeconfig, slurmlink's plugin goes into STATE_DIR/etc and its gateway runs as a fourth daemon
    (log: STATE_DIR/log/gateway.log); a changed kubeconfig restarts the gateway.
    """
    if no_burst_buffer and (kubeconfig is not None or gateway_args):
        raise click.UsageError("--no-burst-buffer cannot be combined with --kubeconfig or --gateway-arg")
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    gateway = None
    if not no_burst_buffer:
        if kubeconfig is None:
            kubeconfig = _remembered_kubeconfig(cluster)
            if kubeconfig is not None:
                _progress(f"using the kubeconfig of an earlier 'up': {kubeconfig}")
        if kubeconfig is not None:
            gateway = GatewaySetup(kubeconfig=kubeconfig, extra_args=gateway_args)
        elif gateway_args:
            raise click.UsageError("--gateway-arg needs --kubeconfig (there is no gateway without it)")
    try:
        cluster.up(
            burst_buffer=None if no_burst_buffer or gateway else placeholder_burst_buffer(),
            wait_timeout=wait_timeout,
            gateway=gateway,
        )
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from exc
    env_cmd = "slurmlink dev-cluster env"
    if state_dir != DEFAULT_STATE_DIR:
        env_cmd += f" --state-dir {shlex.quote(str(cluster.state_dir))}"
    click.echo(f'Dev cluster is up. Use it with: eval "$({env_cmd})"')
    click.echo(
        f"Submit jobs as the job user: runuser -u {cluster.job_user} -- env SLURM_CONF=$SLURM_CONF sbatch ..."
    )
    if gateway is not None:
        click.echo(
            f"slurmlink's burst buffer plugin talks to the gateway at {cluster.gateway_socket} "
            f"(log: {cluster.gateway_log})."
        )


def _remembered_kubeconfig(cluster: DevCluster) -> Path | None:
    """The kubeconfig an earlier ``up`` was given; its installed copy if the original has gone."""
    recorded = cluster.recorded_kubeconfig()
    if recorded is None:
        return None
    if recorded.is_file():
        return recorded
    if cluster.plugin_kubeconfig.is_file():
        _progress(f"{recorded} is gone; using the installed copy {cluster.plugin_kubeconfig}")
        return cluster.plugin_kubeconfig
    raise click.ClickException(
        f"the kubeconfig recorded by an earlier 'up' ({recorded}) is gone; pass --kubeconfig FILE "
        "(or --no-burst-buffer)"
    )


@dev_cluster.command()
@_common_options
@click.option(
    "--purge", is_flag=True, help="Also delete the whole state directory (config, key, state, logs)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=10,
    show_default=True,
    help="Seconds to wait after SIGTERM before sending SIGKILL.",
)
def down(
    state_dir: Path,
    ctld_port: int | None,
    slurmd_port: int | None,
    job_user: str | None,
    purge: bool,
    timeout: float,
) -> None:
    """Stop the cluster's daemons (only those it started, found by pid file).

    Keeps the state directory, so the next 'up' finds jobs and config again, unless --purge is given.
    """
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    purge = purge and cluster.state_dir.exists()
    try:
        cluster.down(purge=purge, timeout=timeout)
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("Dev cluster is down." + (" State directory deleted." if purge else ""))


@dev_cluster.command()
@_common_options
def status(state_dir: Path, ctld_port: int | None, slurmd_port: int | None, job_user: str | None) -> None:
    """Show which daemons run and the node state; exit status 1 if the cluster is not running."""
    from rich.console import Console
    from rich.table import Table

    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    st = cluster.status()
    table = Table(title=f"slurmlink dev cluster ({cluster.state_dir})", show_header=True)
    table.add_column("component")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    for name, alive, detail in [
        ("munged", st.munged, f"socket {cluster.munge_socket}"),
        ("slurmctld", st.slurmctld, f"port {st.ctld_port}"),
        ("slurmd", st.slurmd, f"port {st.slurmd_port}"),
    ]:
        pid = st.pids.get(name)
        state = f"[green]running[/] (pid {pid})" if alive else "[red]stopped[/]"
        table.add_row(name, state, detail)
    if st.gateway_enabled or st.gateway:
        pid = st.pids.get("gateway")
        state = f"[green]running[/] (pid {pid})" if st.gateway else "[red]stopped[/]"
        if st.gateway and not gateway_healthy(cluster.gateway_socket):
            state += " [yellow]not healthy[/]"
        table.add_row("gateway", state, f"socket {cluster.gateway_socket}, log {cluster.gateway_log}")
    else:
        table.add_row("gateway", "[dim]not used[/]", "placeholder burst_buffer.lua (no --kubeconfig given)")
    node = st.node_state or "unknown"
    node_colour = "green" if node == "idle" or node.startswith(("alloc", "mix")) else "yellow"
    table.add_row("node localhost", f"[{node_colour}]{node}[/]", "partition debug")
    table.add_row("SLURM_CONF", "", str(cluster.slurm_conf))
    table.add_row("job user", "", cluster.job_user)
    Console().print(table)
    if not st.running:
        raise SystemExit(1)


@dev_cluster.command()
@_common_options
def env(state_dir: Path, ctld_port: int | None, slurmd_port: int | None, job_user: str | None) -> None:
    """Print shell 'export' lines for Slurm clients: eval "$(slurmlink dev-cluster env)"."""
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    if not cluster.slurm_conf.exists():
        click.echo(
            f"warning: {cluster.slurm_conf} does not exist yet; run 'slurmlink dev-cluster up'", err=True
        )
    for key, value in cluster.env().items():
        click.echo(f"export {key}={shlex.quote(value)}")
