"""``slurmlink controller``: the Workflow controller (and test driver) as a separate process."""

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
from slurmlink.resources.errors import ApiError

if TYPE_CHECKING:
    from slurmlink.client.base import Client
    from slurmlink.controllers.runtime import ControllerRunner

log = logging.getLogger("slurmlink.controller")


async def run_controllers(
    client: Client, *, test_driver: bool, workers: int, stop: asyncio.Event, server: str = ""
) -> None:
    """Run the reconcilers against ``client`` (any ``Client``) until ``stop`` is set."""
    from slurmlink.controllers.runtime import ControllerRunner
    from slurmlink.controllers.testdriver import TestDriverReconciler
    from slurmlink.controllers.workflow import WorkflowReconciler

    runners = [ControllerRunner(client, WorkflowReconciler(), workers=workers)]
    if test_driver:
        runners.append(ControllerRunner(client, TestDriverReconciler(), workers=max(1, workers // 2)))
    for runner in runners:
        runner.start()
    names = [r.reconciler.name for r in runners]
    log.info("controllers started: %s against %s", ", ".join(names), server)
    try:
        synced: asyncio.Future[Any] = asyncio.ensure_future(_all_synced(runners))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({synced, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if synced in done:
            log.info("controllers synced: %s", ", ".join(names))
        else:
            synced.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await synced
        await stopped
    finally:
        log.info("stopping controllers")
        for runner in runners:
            await runner.stop()


async def _all_synced(runners: list[ControllerRunner]) -> None:
    """Wait until every runner has listed its kind, saying so every minute while it has not."""
    for runner in runners:
        while True:
            try:
                await runner.wait_synced(timeout=60.0)
                break
            except TimeoutError:
                log.warning(
                    "%s: not synced after another 60s (is the API reachable?)", runner.reconciler.name
                )


async def _main(kubeconfig: Path | None, context: str | None, test_driver: bool, workers: int) -> None:
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
            client, test_driver=test_driver, workers=workers, stop=stop, server=client.server
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
@log_options
def controller(
    kubeconfig: Path | None,
    context: str | None,
    no_test_driver: bool,
    workers: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run the Workflow controller (and the test driver) against a remote slurmlink API.

    `slurmlink serve` runs these controllers in-process, which is all a single server needs. Use
    this command to scale out instead: run several API replicas on one PostgreSQL store with
    `slurmlink serve --no-controllers`, and the controllers here as a separate process using a
    kubeconfig with the admin role. Run one instance: there is no leader election, so a second
    one only duplicates work. It is the same controller code as in serve, over the HTTP client.
    Runs until SIGINT or SIGTERM, then shuts down cleanly. Pass --no-test-driver when the API
    servers run with --no-test-driver (then no test driver rules exist).
    """
    setup_client_logging(log_level, log_format)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
        asyncio.run(_main(kubeconfig, context, not no_test_driver, workers))
