"""``slurmlink slurm gateway``: the local daemon the burst_buffer.lua plugin talks to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from slurmlink.cli.resources_cmd import CliError, error_text, log_options, open_client, setup_client_logging
from slurmlink.client.base import Client
from slurmlink.cpu_priority import MAX_NICE, lower_cpu_priority
from slurmlink.resources.errors import ApiError
from slurmlink.slurm.gateway import config as gwconfig
from slurmlink.slurm.gateway.banksettings import BankSettings

log = logging.getLogger("slurmlink.gateway")
#: The worker runs the stage callbacks: a few milliseconds later costs nothing there (see front.py).
DEFAULT_WORKER_NICE = 10


async def _check_credentials(client: Client, config: gwconfig.GatewayConfig) -> None:
    """Fail fast on credentials the server rejects; an unreachable server is retried (and reported by
    every callback) until it comes back."""
    from slurmlink.resources.dws.workflow import WORKFLOW

    try:
        await client.list(WORKFLOW, config.namespace)
    except ApiError as exc:
        if exc.code in (401, 403):
            raise CliError(error_text(exc)) from exc
        log.warning("%s; retrying", exc.message)


async def _serve_until(
    start: Callable[[], Awaitable[None]], config: gwconfig.GatewayConfig, stop: asyncio.Event
) -> None:
    try:
        await start()
    except (OSError, RuntimeError) as exc:
        raise CliError(f"error: cannot listen on {config.socket_path}: {exc}") from exc
    await stop.wait()


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def undo() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return undo


async def _run_front(
    kubeconfig: Path, context: str | None, config: gwconfig.GatewayConfig, worker_argv: list[str]
) -> None:
    from slurmlink.slurm.gateway.front import FrontGateway, WorkerProcess, worker_socket_path
    from slurmlink.slurm.gateway.worker_link import WorkerLink

    client = open_client(kubeconfig, context)
    stop = asyncio.Event()
    undo_signals = _stop_on_signals(asyncio.get_running_loop(), stop)
    worker = WorkerProcess(worker_argv)
    front = FrontGateway(client, config, WorkerLink(worker_socket_path(config.socket_path)))
    try:
        await _check_credentials(client, config)
        await worker.start()
        await _serve_until(front.start, config, stop)
    finally:
        undo_signals()
        await front.stop()
        await worker.stop()
        await client.aclose()
        log.info("gateway stopped")


async def _run_worker(kubeconfig: Path, context: str | None, config: gwconfig.GatewayConfig) -> None:
    """The full gateway on the internal socket; stops when the front closes our stdin."""
    from slurmlink.slurm.gateway import Gateway

    client = open_client(kubeconfig, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    undo_signals = _stop_on_signals(loop, stop)
    stdin = sys.stdin.fileno()

    def front_gone() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin)
            stop.set()

    loop.add_reader(stdin, front_gone)
    gateway = Gateway(client, config)
    try:
        await _check_credentials(client, config)
        await _serve_until(gateway.start, config, stop)
    finally:
        loop.remove_reader(stdin)
        undo_signals()
        await gateway.stop()
        await client.aclose()
        log.info("gateway worker stopped")


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
    help="Seconds between sweeps for Workflows whose Slurm job no longer exists, or has ended without a "
    "teardown on the way (0 turns the sweeper off).",
)
@click.option(
    "--sweep-min-age",
    type=click.FloatRange(min=0),
    default=gwconfig.DEFAULT_SWEEP_MIN_AGE,
    show_default=True,
    help="Only Workflows older than this many seconds are swept; an ended job's Workflow also needs this "
    "long (at least 5 s) without a callback about the job.",
)
@click.option(
    "--worker-nice",
    type=click.IntRange(0, MAX_NICE),
    default=DEFAULT_WORKER_NICE,
    show_default=True,
    envvar="SLURMLINK_GATEWAY_WORKER_NICE",
    help="How much to lower the CPU priority of the gateway's worker process, which runs the stage callbacks "
    "(setup to teardown, but pre_run) and the sweeper. The front process, which answers sbatch's "
    "job_process and each job's paths while slurmctld holds its job lock, and pre_run while the job "
    "holds its nodes, keeps its priority.",
)
@click.option(
    "--setups-at-once",
    type=click.IntRange(min=0),
    default=gwconfig.DEFAULT_SETUPS_AT_ONCE,
    show_default=True,
    envvar="SLURMLINK_GATEWAY_SETUPS_AT_ONCE",
    help="Burst-buffer setups worked on at once; the others wait their turn in the order Slurm asked "
    "(a setup that waited 60 s goes ahead anyway). After a burst of submissions Slurm stages in every "
    "job the pools have room for at once; taken a few at a time, the first jobs get their buffers and "
    "start within seconds. 0: no limit.",
)
@click.option(
    "--bank/--no-bank",
    default=False,
    show_default=True,
    help="Serve the bank's Slurm hooks: job_submit.lua's submit check (from a copy of the balances "
    "refreshed every --bank-refresh s) and PrologSlurmctld/EpilogSlurmctld's hold and charge.",
)
@click.option("--bank-refresh", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option(
    "--bank-spool",
    type=click.Path(file_okay=False, path_type=Path),
    default="/var/spool/slurmlink/bank",
    show_default=True,
    help="Where charges the bank could not take wait to be sent again.",
)
@click.option(
    "--bank-on-insufficient",
    type=click.Choice(["hold_job", "requeue"]),
    default="hold_job",
    show_default=True,
    help="A job whose account cannot cover it at start is requeued; hold_job also holds it, with the "
    "reason in its AdminComment, so it does not try again every few minutes.",
)
@click.option(
    "--bank-on-unreachable",
    type=click.Choice(["allow", "deny"]),
    default="allow",
    show_default=True,
    help="When the bank cannot be reached at a job's start: let it run (its run is settled later) or "
    "requeue it.",
)
@click.option(
    "--worker", "as_worker", is_flag=True, hidden=True, help="Run as the worker (started by the front)."
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
    worker_nice: int,
    setups_at_once: int,
    bank: bool,
    bank_refresh: float,
    bank_spool: Path,
    bank_on_insufficient: str,
    bank_on_unreachable: str,
    as_worker: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the gateway burst_buffer.lua forwards every Slurm callback to.

    Run it on the slurmctld host as SlurmUser (it reads job scripts from StateSaveLocation and may run
    scancel), before slurmctld starts. It creates Workflows, moves them through their states, waits for
    drivers by watching the API, writes the job's environment, tears Workflows down, cancels jobs whose
    drivers reported fatal errors, and sweeps Workflows whose job Slurm no longer knows or that ended
    without a teardown. Runs until SIGINT or SIGTERM.
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
        setups_at_once=setups_at_once,
        bank=BankSettings(
            refresh=bank_refresh,
            spool_dir=bank_spool.expanduser().absolute(),
            on_insufficient_at_start=bank_on_insufficient,
            on_unreachable_at_start=bank_on_unreachable,
        )
        if bank
        else None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        if as_worker:
            log.info("gateway worker: lowered CPU priority: %s", lower_cpu_priority(worker_nice))
            asyncio.run(_run_worker(kubeconfig, context, config))
            return
        from slurmlink.slurm.gateway.front import worker_socket_path

        try:
            worker_socket = worker_socket_path(config.socket_path)
        except ValueError as exc:
            raise CliError(f"error: {exc}") from exc
        worker_argv = [
            sys.executable, "-m", "slurmlink.cli.main", "slurm", "gateway", "--worker",
            "--kubeconfig", str(kubeconfig),
            "--socket", str(worker_socket),
            "--namespace", namespace,
            "--slurm-conf", str(slurm_conf),
            "--transient-grace", repr(transient_grace),
            "--api-timeout", repr(api_timeout),
            "--sweep-interval", repr(sweep_interval),
            "--sweep-min-age", repr(sweep_min_age),
            "--worker-nice", str(worker_nice),
            "--setups-at-once", str(setups_at_once),
            "--bank" if bank else "--no-bank",
            "--bank-refresh", repr(bank_refresh),
            "--bank-spool", str(bank_spool),
            "--bank-on-insufficient", bank_on_insufficient,
            "--bank-on-unreachable", bank_on_unreachable,
            "--log-level", log_level,
            "--log-format", log_format,
        ]  # fmt: skip
        if context is not None:
            worker_argv += ["--context", context]
        asyncio.run(_run_front(kubeconfig, context, config, worker_argv))
