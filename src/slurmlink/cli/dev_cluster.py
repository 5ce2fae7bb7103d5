"""``slurmlink dev-cluster``: a local multi-node Slurm on this host, for tests and the quick start."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from slurmlink.slurm.devcluster import (
    DEFAULT_ACCOUNT,
    DEFAULT_COMPUTE_NODES,
    DEFAULT_CTLD_PORT,
    DEFAULT_DBD_PORT,
    DEFAULT_JOB_USER,
    DEFAULT_SLURMD_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_STORAGE_NODES,
    ENFORCE_FLAGS,
    MAX_COMPUTE_NODES,
    MAX_STORAGE_NODES,
    DevCluster,
    DevClusterError,
    DevClusterStatus,
    GatewaySetup,
    gateway_healthy,
    placeholder_burst_buffer,
)
from slurmlink.slurm.devcluster.config import DEF_MEM_PER_CPU
from slurmlink.slurm.devcluster.layout import DEFAULT_CLUSTER_NAME, check_cluster_name
from slurmlink.slurm.devcluster.partitions import PartitionSpec, PartitionSpecError, parse_partitions
from slurmlink.slurm.devcluster.slurmdbd import parse_enforce

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


def node_count_options(func: _F) -> _F:
    """``--compute-nodes`` and ``--storage-nodes`` (for ``up`` here and in the quick start)."""
    options = [
        click.option(
            "--compute-nodes",
            type=click.IntRange(1, MAX_COMPUTE_NODES),
            default=None,
            help="Compute nodes (compute1...), each running slurmd in its own network, UTS and mount "
            f"namespace (default: the number of the last 'up', else {DEFAULT_COMPUTE_NODES}).",
        ),
        click.option(
            "--storage-nodes",
            type=click.IntRange(0, MAX_STORAGE_NODES),
            default=None,
            help="Storage nodes (storage1...): namespaces like compute nodes', without slurmd "
            f"(default: the number of the last 'up', else {DEFAULT_STORAGE_NODES}).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _partition_specs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[PartitionSpec, ...] | None:
    if not values:
        return None
    try:
        return parse_partitions(values)
    except PartitionSpecError as exc:
        raise click.BadParameter(str(exc)) from None


def _cluster_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_cluster_name(value)
    except DevClusterError as exc:
        raise click.BadParameter(str(exc)) from None


def partition_options(func: _F) -> _F:
    """``--cluster-name`` and ``--partition`` (for ``up`` here and in the quick start)."""
    options = [
        click.option(
            "--cluster-name",
            default=None,
            callback=_cluster_name,
            help="Slurm's ClusterName (lower case; changing it restarts Slurm). Default: the last 'up's, "
            f"else {DEFAULT_CLUSTER_NAME}.",
        ),
        click.option(
            "--partition",
            "partitions",
            multiple=True,
            metavar="NAME[:KEY=VALUE,...]",
            callback=_partition_specs,
            help="A Slurm partition (repeatable; together they replace the last 'up's, else one 'debug' "
            "partition on every compute node). Keys: Nodes (a count of compute nodes, or node names; "
            "default all), MaxTime and DefaultTime (minutes, D-HH:MM:SS or UNLIMITED), MaxNodes, "
            "MaxMemPerNode or MaxMemPerCPU, DefMemPerNode or DefMemPerCPU (MiB, or 4G), Default=YES "
            "(else the first is the default), State (UP, DOWN, DRAIN, INACTIVE), Hidden=YES, AllowAccounts, "
            "AllowQos, "
            "Features (node features of its nodes). E.g. --partition 'short:MaxTime=30,MaxNodes=1'. "
            "Changes are applied with a reconfigure.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def accounting_options(default: str) -> Callable[[_F], _F]:
    """``--accounting/--no-accounting``, ``--dbd-port`` and ``--accounting-enforce`` (for ``up`` here and
    in the quick start); ``default`` says, for the help text, what applies when none was ever given."""

    def decorate(func: _F) -> _F:
        options = [
            click.option(
                "--accounting/--no-accounting",
                default=None,
                help="Run Slurm's accounting storage: slurmdbd on a private MariaDB (data dir and socket "
                "under the state dir), so sacct and sacctmgr work; the job user's jobs are charged to "
                f"account '{DEFAULT_ACCOUNT}' unless they name another. Adds a second or two to 'up' (a few "
                f"more the first time, which makes the database). Default: the last 'up's, else {default}.",
            ),
            click.option(
                "--dbd-port",
                type=click.IntRange(1, 65535),
                default=None,
                help=f"slurmdbd's port (default: the last 'up's, else {DEFAULT_DBD_PORT}); MariaDB "
                "listens on a Unix socket only.",
            ),
            click.option(
                "--accounting-enforce",
                metavar="FLAGS",
                default=None,
                help="Slurm's AccountingStorageEnforce with accounting, e.g. 'associations,limits,safe' "
                f"(flags: {', '.join(ENFORCE_FLAGS)}); 'none' turns it off. Default: the last 'up's, "
                "else none, so users without an association still run jobs.",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def memory_limits_option(func: _F) -> _F:
    """``--memory-limits/--no-memory-limits`` (for ``up`` here and in the quick start)."""
    return click.option(
        "--memory-limits/--no-memory-limits",
        default=None,
        help="Enforce jobs' memory with cgroups (Slurm's task/cgroup on cgroup v1's memory controller, "
        "SelectTypeParameters=CR_Core_Memory): jobs without --mem get DefMemPerCPU="
        f"{DEF_MEM_PER_CPU} MiB per CPU, so they no longer take a whole node's memory by default, and a "
        "job exceeding its memory ends OUT_OF_MEMORY. Needs /sys/fs/cgroup/memory (cgroup v1) mounted "
        "read-write. Turning it on or off restarts Slurm. Default: the last 'up's, else off.",
    )(func)


def memory_limits_row(st: DevClusterStatus) -> tuple[str, str, str]:
    """Status-table row: whether jobs' memory is enforced."""
    if st.memory_limits_enabled:
        return (
            "memory limits",
            "[green]on[/]",
            f"cgroup v1 memory enforcement; jobs without --mem get {DEF_MEM_PER_CPU} MiB per CPU",
        )
    return ("memory limits", "[dim]off[/]", "jobs' memory is not enforced (up --memory-limits)")


def check_accounting_options(accounting: bool | None, accounting_enforce: str | None) -> None:
    """Known flags only; and enforcement without accounting means nothing: refuse it rather than ignore it."""
    try:
        enforcing = parse_enforce(accounting_enforce)
    except DevClusterError as exc:
        raise click.BadParameter(str(exc), param_hint="--accounting-enforce") from None
    if accounting is False and enforcing:
        raise click.UsageError("--accounting-enforce needs accounting (drop --no-accounting)")


def _cluster(
    state_dir: Path,
    ctld_port: int | None,
    slurmd_port: int | None,
    job_user: str | None,
    compute_nodes: int | None = None,
    storage_nodes: int | None = None,
    **settings: Any,
) -> DevCluster:
    try:
        return DevCluster.from_state_dir(
            state_dir,
            log=_progress,
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            job_user=job_user,
            compute_nodes=compute_nodes,
            storage_nodes=storage_nodes,
            **settings,
        )
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("dev-cluster")
def dev_cluster() -> None:
    """Run a local multi-node Slurm (Debian's 22.05 packages) for tests and the quick start.

    Everything lives in one state directory: slurm.conf, a private munge daemon and key, Slurm state, spool,
    logs and pid files. The system's /etc/slurm and munge are left alone. Each node (compute1..., running
    slurmd, and storage1...) has its own network, hostname and mount namespace, on a private /24 whose
    bridge carries the controller's address. Needs root (the daemons run as root); jobs that use burst
    buffers are submitted as the unprivileged job user.
    """


@dev_cluster.command()
@_common_options
@node_count_options
@partition_options
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
    "--burst-buffer-plugin",
    type=click.Choice(["lua", "datawarp"]),
    default="lua",
    show_default=True,
    help="Which of Slurm's plugins talks to slurmlink's gateway (with --kubeconfig): 'lua' "
    "(burst_buffer.lua) or 'datawarp' (Slurm's burst_buffer/datawarp, its GetSysState/GetSysStatus "
    "pointing at wrappers of 'slurmlink dw-wlm-cli' in STATE_DIR/etc; DefaultPool=gluster).",
)
@click.option(
    "--no-burst-buffer",
    is_flag=True,
    help="Do not enable BurstBufferType=burst_buffer/lua. Without it, and without a kubeconfig given now or "
    "by an earlier 'up', a do-nothing placeholder plugin is installed so '#DW' jobs run.",
)
@accounting_options(default="off")
@memory_limits_option
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for the nodes to become idle.",
)
def up(
    state_dir: Path,
    ctld_port: int | None,
    slurmd_port: int | None,
    job_user: str | None,
    compute_nodes: int | None,
    storage_nodes: int | None,
    cluster_name: str | None,
    partitions: tuple[PartitionSpec, ...] | None,
    kubeconfig: Path | None,
    gateway_args: tuple[str, ...],
    burst_buffer_plugin: str,
    no_burst_buffer: bool,
    accounting: bool | None,
    dbd_port: int | None,
    accounting_enforce: str | None,
    memory_limits: bool | None,
    wait_timeout: float,
) -> None:
    """Start the cluster, or refresh a running one, and wait until its compute nodes are idle.

    Installs the Slurm and munge packages with apt-get and creates the job user when missing. Running it
    again is cheap: running daemons are kept and only reconfigured (or restarted) if the config changed;
    other node counts add or remove nodes (and restart Slurm).
    With --kubeconfig, slurmlink's plugin goes into STATE_DIR/etc and its gateway runs as a fourth daemon
    (log: STATE_DIR/log/gateway.log); a changed kubeconfig restarts the gateway.
    With --accounting, MariaDB (STATE_DIR/mariadb) and slurmdbd (STATE_DIR/etc/slurmdbd.conf, log
    STATE_DIR/log/slurmdbd.log) start before slurmctld; off by default, since most uses need no sacct.
    --no-accounting later stops them and keeps the database for the next --accounting.
    --partition (repeatable) replaces the partitions; 'slurmlink slurm partitions' shows what Slurm made
    of them.
    With --memory-limits, jobs' memory is enforced with cgroups (STATE_DIR/etc/cgroup.conf): a job over its
    --mem (default 256 MiB per CPU) ends OUT_OF_MEMORY.
    """
    if no_burst_buffer and (kubeconfig is not None or gateway_args):
        raise click.UsageError("--no-burst-buffer cannot be combined with --kubeconfig or --gateway-arg")
    check_accounting_options(accounting, accounting_enforce)
    cluster = _cluster(
        state_dir,
        ctld_port,
        slurmd_port,
        job_user,
        compute_nodes,
        storage_nodes,
        accounting=accounting,
        dbd_port=dbd_port,
        accounting_enforce=accounting_enforce,
        cluster_name=cluster_name,
        partitions=partitions,
        memory_limits=memory_limits,
    )
    gateway = None
    if not no_burst_buffer:
        if kubeconfig is None:
            kubeconfig = _remembered_kubeconfig(cluster)
            if kubeconfig is not None:
                _progress(f"using the kubeconfig of an earlier 'up': {kubeconfig}")
        if kubeconfig is not None:
            gateway = GatewaySetup(kubeconfig=kubeconfig, extra_args=gateway_args, plugin=burst_buffer_plugin)
        elif gateway_args or burst_buffer_plugin != "lua":
            if burst_buffer_plugin != "lua":
                raise click.UsageError(
                    "--burst-buffer-plugin datawarp needs --kubeconfig (slurmlink's gateway)"
                )
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
    if cluster.memory_limits:
        click.echo(
            f"Memory limits: jobs get --mem (else {DEF_MEM_PER_CPU} MiB per CPU); a job over it ends "
            "OUT_OF_MEMORY."
        )
    if cluster.accounting:
        click.echo(
            f"Accounting: slurmdbd on port {cluster.dbd_port}; sacct and sacctmgr work with SLURM_CONF "
            f"(jobs of {cluster.job_user} go to account '{DEFAULT_ACCOUNT}')."
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
    """Stop the cluster's daemons (only those it started, found by pid file) and remove its nodes.

    Every process still inside a node is killed, the nodes' namespaces, veths and the bridge are removed;
    slurmdbd and MariaDB are stopped too. Keeps the state directory, so the next 'up' finds jobs, the
    accounting database, config and addresses again, unless --purge.
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
    """Show which daemons run and each node's state; exit status 1 if the cluster is not running."""
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
        ("slurmctld", st.slurmctld, f"port {st.ctld_port}; slurmd port {st.slurmd_port} on every node"),
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
    for row in accounting_rows(cluster, st):
        table.add_row(*row)
    table.add_row(*memory_limits_row(st))
    for row in node_rows(st):
        table.add_row(*row)
    table.add_row(*partition_row(cluster))
    table.add_row("SLURM_CONF", "", str(cluster.slurm_conf))
    table.add_row("job user", "", cluster.job_user)
    Console().print(table)
    if not st.running:
        raise SystemExit(1)


def partition_row(cluster: DevCluster) -> tuple[str, str, str]:
    """Status-table row: the cluster name and its partitions as configured (default marked ``*``)."""
    default = cluster.default_partition
    specs = []
    for spec in cluster.partitions:
        name, sep, rest = spec.to_text().partition(":")
        specs.append(f"{name}{'*' if name == default else ''}{sep}{rest}")
    return (f"cluster {cluster.cluster_name}", "", "partitions " + "  ".join(specs))


def accounting_rows(cluster: DevCluster, st: DevClusterStatus) -> list[tuple[str, str, str]]:
    """Status-table rows for MariaDB and slurmdbd (one "not used" row without accounting)."""
    if not (st.accounting_enabled or st.mariadb or st.slurmdbd):
        return [("accounting", "[dim]not used[/]", "no slurmdbd (up --accounting to run it)")]
    rows = []
    for name, alive, detail in [
        ("mariadbd", st.mariadb, f"socket {cluster.mariadb.socket}, data {cluster.mariadb.datadir}"),
        ("slurmdbd", st.slurmdbd, f"port {cluster.dbd_port}, {cluster.slurmdbd_conf}"),
    ]:
        pid = st.pids.get(name)
        state = f"[green]running[/] (pid {pid})" if alive else "[red]stopped[/]"
        rows.append((name, state, detail))
    return rows


def node_rows(st: DevClusterStatus) -> list[tuple[str, str, str]]:
    """One status-table row per node: component, state (rich markup), detail."""
    rows = []
    for node in st.nodes:
        where = node.address or "no address yet"
        if not node.exists:
            rows.append((f"node {node.name}", "[red]absent[/]", f"{node.role}, {where}"))
            continue
        if node.role == "storage":
            rows.append((f"node {node.name}", "[green]present[/]", f"storage, {where}"))
            continue
        state = node.state or "unknown"
        colour = "green" if state == "idle" or state.startswith(("alloc", "mix")) else "yellow"
        pid = st.pids.get(f"slurmd@{node.name}")
        slurmd = f"slurmd pid {pid}" if node.slurmd else "[red]slurmd stopped[/]"
        rows.append((f"node {node.name}", f"[{colour}]{state}[/]", f"compute, {where}, {slurmd}"))
    if st.controller_address:
        rows.append(("controller", "", f"{st.controller_address} (the bridge: slurmctld as nodes see it)"))
    return rows


@dev_cluster.command()
@_common_options
def env(state_dir: Path, ctld_port: int | None, slurmd_port: int | None, job_user: str | None) -> None:
    """Print shell 'export' lines for Slurm clients: eval "$(slurmlink dev-cluster env)".

    SLURM_CONF, SLURMLINK_JOB_USER (who submits burst buffer jobs), the nodes by role
    (SLURMLINK_COMPUTE_NODES, SLURMLINK_STORAGE_NODES: comma-separated names) and, once 'up' has made the
    network, SLURMLINK_CONTROLLER_ADDRESS (the bridge's address, where nodes reach the host's services).
    """
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    if not cluster.slurm_conf.exists():
        click.echo(
            f"warning: {cluster.slurm_conf} does not exist yet; run 'slurmlink dev-cluster up'", err=True
        )
    for key, value in cluster.env().items():
        click.echo(f"export {key}={shlex.quote(value)}")


@dev_cluster.command()
@_common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON list: name, role, address, namespace files.")
def nodes(
    state_dir: Path, ctld_port: int | None, slurmd_port: int | None, job_user: str | None, as_json: bool
) -> None:
    """List the nodes: name, role, address and the files pinning their namespaces."""
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    try:
        listing = cluster.nodes
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([node.to_json() for node in listing], indent=2))
        return
    for node in listing:
        click.echo(f"{node.name}\t{node.role}\t{node.address}\t{node.ns_dir}")


@dev_cluster.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@_common_options
@click.option("--user", "-u", "run_as", default=None, help="Run the command as this user (runuser -u).")
@click.option(
    "--cwd", type=click.Path(file_okay=False, path_type=Path), default=None, help="Working directory."
)
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    state_dir: Path,
    ctld_port: int | None,
    slurmd_port: int | None,
    job_user: str | None,
    run_as: str | None,
    cwd: Path | None,
    node: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND inside NODE (its network, hostname and mount namespace), e.g.
    'slurmlink dev-cluster exec compute1 -- findmnt'. Exits with the command's status."""
    if command[:1] == ("--",):  # click keeps the "--" that ends our options after NODE
        command = command[1:]
    if not command:
        raise click.UsageError("give the command to run after NODE (and '--')")
    cluster = _cluster(state_dir, ctld_port, slurmd_port, job_user)
    try:
        argv = cluster.node_command(node, list(command), user=run_as, cwd=cwd)
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]}: {exc}") from exc
