"""``slurmlink controller``: the registered controllers as a separate process; one instance leads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from slurmlink.cli.resources_cmd import (
    CliError,
    error_text,
    kubeconfig_options,
    log_options,
    open_client,
    setup_client_logging,
)
from slurmlink.controllers import leaderelection as le
from slurmlink.resources.errors import ApiError

if TYPE_CHECKING:
    from slurmlink.client.base import Client
    from slurmlink.controllers.manager import Manager
    from slurmlink.controllers.registry import ControllerSettings

log = logging.getLogger("slurmlink.controller")


async def run_controllers(
    client: Client,
    *,
    test_driver: bool,
    workers: int,
    stop: asyncio.Event,
    server: str = "",
    election: le.LeaderElectionConfig | None = None,
    settings: ControllerSettings | None = None,
) -> None:
    """Run the registered controllers against ``client`` (any ``Client``) until ``stop`` is set."""
    from slurmlink.controllers.manager import Manager

    manager = Manager(client, test_driver=test_driver, workers=workers, election=election, settings=settings)
    manager.start()
    names = ", ".join(manager.names)
    if election is None:
        log.info("controllers started: %s against %s (no leader election)", names, server)
    else:
        log.info(
            "controllers %s against %s: campaigning for lease %s/%s as %s",
            names,
            server,
            election.namespace,
            election.name,
            election.identity,
        )
    try:
        synced: asyncio.Future[Any] = asyncio.ensure_future(_all_synced(manager))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({synced, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if synced in done:
            log.info("controllers synced: %s", names)
        else:
            synced.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await synced
        await stopped
    finally:
        log.info("stopping controllers")
        await manager.stop()


async def _all_synced(manager: Manager) -> None:
    """Wait until every runner has listed its kinds, saying so every minute while it has not."""
    for runner in manager.runners:
        while True:
            try:
                await runner.wait_synced(timeout=60.0)
                break
            except TimeoutError:
                log.warning(
                    "%s: not synced after another 60s (is the API reachable?)", runner.reconciler.name
                )


async def _main(
    kubeconfig: Path | None,
    context: str | None,
    test_driver: bool,
    workers: int,
    election: le.LeaderElectionConfig | None,
    settings: ControllerSettings,
) -> None:
    from slurmlink.resources.dws.workflow import WORKFLOW

    client = open_client(kubeconfig, context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Fail fast on credentials the server rejects; an unreachable server is retried by the runners.
        try:
            await client.list(WORKFLOW, None)
        except ApiError as exc:
            if exc.code in (401, 403):
                raise CliError(error_text(exc)) from exc
            log.warning("%s; retrying", exc.message)
        await run_controllers(
            client,
            test_driver=test_driver,
            workers=workers,
            stop=stop,
            server=client.server,
            election=election,
            settings=settings,
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.aclose()
        log.info("controller stopped")


@click.command("controller")
@kubeconfig_options
@click.option(
    "--no-test-driver",
    is_flag=True,
    help="Do not run the test driver (driver id 'tester'); only the Workflow controller.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Concurrent reconciles of the Workflow controller (the test driver gets half, at least 1).",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=True,
    show_default=True,
    help="Act only while holding the leader Lease, so several instances can run as standbys.",
)
@click.option("--lease-name", default=le.LEASE_NAME, show_default=True, help="Name of the leader Lease.")
@click.option(
    "--lease-namespace",
    default=le.LEASE_NAMESPACE,
    show_default=True,
    help="Namespace of the leader Lease (the server's system namespace).",
)
@click.option(
    "--identity",
    default=None,
    help="This instance's holder identity in the Lease (default: HOSTNAME_PID_UUID).",
)
@click.option(
    "--leader-elect-lease-duration",
    type=click.FloatRange(1, None),
    default=le.LEASE_DURATION,
    show_default=True,
    help="Seconds a standby waits, after it last saw the Lease renewed, before taking it over.",
)
@click.option(
    "--leader-elect-renew-deadline",
    type=click.FloatRange(0.5, None),
    default=le.RENEW_DEADLINE,
    show_default=True,
    help="Seconds the leader keeps trying to renew before it stops acting (less than the duration).",
)
@click.option(
    "--leader-elect-retry-period",
    type=click.FloatRange(0.1, None),
    default=le.RETRY_PERIOD,
    show_default=True,
    help="Seconds between renewals (and acquisition attempts).",
)
@click.option(
    "--node-heartbeat-timeout",
    type=click.FloatRange(min=0.1),
    default=40.0,
    show_default=True,
    help="Seconds without a heartbeat from a storage node's agent before its Storage is marked Offline.",
)
@log_options
def controller(
    kubeconfig: Path | None,
    context: str | None,
    no_test_driver: bool,
    workers: int,
    leader_elect: bool,
    lease_name: str,
    lease_namespace: str,
    identity: str | None,
    leader_elect_lease_duration: float,
    leader_elect_renew_deadline: float,
    leader_elect_retry_period: float,
    node_heartbeat_timeout: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the controllers (Workflow, test driver, garbage collector, storage heartbeat, storage pools)
    against a remote slurmlink API.

    `slurmlink serve` runs these controllers in-process, which is all a single server needs. Use
    this command to scale out instead: run several API replicas on one PostgreSQL store with
    `slurmlink serve --no-controllers`, and the controllers here as separate processes using a
    kubeconfig with the admin role. Run two or more for availability: they elect a leader through
    a coordination.k8s.io/v1 Lease (`kubectl get leases -A` shows the holder) and only the leader
    acts; the others keep their caches warm and take over once the leader's lease expires (12 s
    by default), or at once when it shuts down cleanly and releases it. A leader that cannot renew
    within the renew deadline stops acting and campaigns again. It is the same controller code as
    in serve, over the HTTP client. Runs until SIGINT or SIGTERM, then shuts down cleanly. Pass
    --no-test-driver when the API servers run with --no-test-driver (then no test driver rules
    exist).
    """
    setup_client_logging(log_level, log_format)
    election = None
    if leader_elect:
        try:
            election = le.LeaderElectionConfig(
                lease_name,
                lease_namespace,
                identity or le.default_identity(),
                lease_duration=leader_elect_lease_duration,
                renew_deadline=leader_elect_renew_deadline,
                retry_period=leader_elect_retry_period,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
        from slurmlink.controllers.registry import ControllerSettings

        settings = ControllerSettings(node_heartbeat_timeout=node_heartbeat_timeout)
        asyncio.run(_main(kubeconfig, context, not no_test_driver, workers, election, settings))
