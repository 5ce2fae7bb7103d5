"""``slurmlink slurm gateway``: the local daemon the burst_buffer.lua plugin talks to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import click

from slurmlink.cli.resources_cmd import CliError, error_text, log_options, open_client, setup_client_logging
from slurmlink.resources.errors import ApiError
from slurmlink.slurm.gateway import config as gwconfig

log = logging.getLogger("slurmlink.gateway")


async def _main(kubeconfig: Path, context: str | None, config: gwconfig.GatewayConfig) -> None:
    from slurmlink.resources.dws.workflow import WORKFLOW
    from slurmlink.slurm.gateway import Gateway

    client = open_client(kubeconfig, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(client, config)
    try:
        # Fail fast on credentials the server rejects; an unreachable server is retried (and reported by
        # every callback) until it comes back.
        try:
            await client.list(WORKFLOW, config.namespace)
        except ApiError as exc:
            if exc.code in (401, 403):
                raise CliError(error_text(exc)) from exc
            log.warning("%s; retrying", exc.message)
        try:
            await gateway.start()
        except (OSError, RuntimeError) as exc:
            raise CliError(f"error: cannot listen on {config.socket_path}: {exc}") from exc
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await gateway.stop()
        await client.aclose()
        log.info("gateway stopped")


@click.command("gateway")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="The plugin's kubeconfig (role workload-manager), e.g. /etc/slurm/slurm-dws.kubeconfig as written "
    "by 'slurmlink slurm install'.",
)
@click.option("--context", default=None, help="kubeconfig context to use (default: its current-context).")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(gwconfig.DEFAULT_SOCKET_PATH),
    show_default=True,
    help="Unix socket to listen on; must match the path rendered into burst_buffer.lua.",
)
@click.option(
    "--namespace",
    default=None,
    help="Namespace of the Workflows (default: the kubeconfig context's, else "
    f"{gwconfig.DEFAULT_NAMESPACE}).",
)
@click.option(
    "--slurm-conf",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="slurm.conf of the cluster (for scancel/scontrol and StateSaveLocation; default: $SLURM_CONF, "
    "else /etc/slurm/slurm.conf).",
)
@click.option(
    "--transient-grace",
    type=click.FloatRange(min=0),
    default=gwconfig.DEFAULT_TRANSIENT_GRACE,
    show_default=True,
    help="Seconds a state may stay in TransientCondition before the callback fails with the driver's "
    "message.",
)
@click.option(
    "--api-timeout",
    type=click.FloatRange(min=1),
    default=gwconfig.DEFAULT_API_TIMEOUT,
    show_default=True,
    help="Seconds a callback keeps retrying while the slurmlink API is unreachable before it fails.",
)
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0),
    default=gwconfig.DEFAULT_SWEEP_INTERVAL,
    show_default=True,
    help="Seconds between sweeps for Workflows whose Slurm job no longer exists (0 turns the sweeper off).",
)
@click.option(
    "--sweep-min-age",
    type=click.FloatRange(min=0),
    default=gwconfig.DEFAULT_SWEEP_MIN_AGE,
    show_default=True,
    help="Only Workflows older than this many seconds are considered orphans.",
)
@log_options
def gateway(
    kubeconfig: Path,
    context: str | None,
    socket_path: Path,
    namespace: str | None,
    slurm_conf: Path | None,
    transient_grace: float,
    api_timeout: float,
    sweep_interval: float,
    sweep_min_age: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the gateway burst_buffer.lua forwards every Slurm callback to.

    Run it on the slurmctld host as SlurmUser (it reads job scripts from StateSaveLocation and may run
    scancel), before slurmctld starts. It creates Workflows, moves them through their states, waits for
    drivers by watching the API, writes the job's environment, tears Workflows down, cancels jobs whose
    drivers reported fatal errors, and sweeps Workflows whose job Slurm no longer knows. Runs until SIGINT
    or SIGTERM.
    """
    from slurmlink.auth.kubeconfig import KubeconfigError, load_kubeconfig

    setup_client_logging(log_level, log_format)
    if namespace is None:
        try:
            namespace = load_kubeconfig(kubeconfig, context).namespace or gwconfig.DEFAULT_NAMESPACE
        except (KubeconfigError, ValueError, OSError) as exc:
            raise CliError(f"error: {exc}") from exc
    if slurm_conf is None:
        slurm_conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    config = gwconfig.GatewayConfig(
        socket_path=socket_path.expanduser().absolute(),
        namespace=namespace,
        slurm_conf=slurm_conf,
        transient_grace=transient_grace,
        api_timeout=api_timeout,
        sweep_interval=sweep_interval,
        sweep_min_age=sweep_min_age,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(kubeconfig, context, config))
