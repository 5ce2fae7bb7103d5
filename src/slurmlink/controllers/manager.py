"""Runs a set of controllers on shared informers, optionally only while holding a leader Lease.

The informers run all the time, so a standby's caches are warm; workers run only while this
process leads (controller-runtime's manager). ``slurmlink serve`` and ``slurmlink controller`` both
use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory
from slurmlink.controllers import registry
from slurmlink.controllers.leaderelection import LeaderElectionConfig, LeaderElector
from slurmlink.controllers.runtime import ControllerRunner

log = logging.getLogger(__name__)


class Manager:
    """The controllers of one process. ``start`` returns at once; ``stop`` stops and releases."""

    def __init__(
        self,
        client: Client,
        *,
        test_driver: bool,
        workers: int = 4,
        election: LeaderElectionConfig | None = None,
        settings: registry.ControllerSettings | None = None,
    ) -> None:
        self.client = client
        self.informers = InformerFactory(client)
        self.runners: list[ControllerRunner] = registry.build_runners(
            client, self.informers, test_driver=test_driver, workers=workers, settings=settings
        )
        self.elector = LeaderElector(client, election, self.informers) if election is not None else None
        self._election: asyncio.Task[None] | None = None

    @property
    def names(self) -> list[str]:
        return [r.reconciler.name for r in self.runners]

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self.runners)

    @property
    def leading(self) -> bool:
        """Whether the workers run (always, without leader election)."""
        return self.elector is None or self.elector.is_leader

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        for runner in self.runners:
            await runner.wait_synced(timeout)

    def start(self) -> None:
        for runner in self.runners:
            runner.prepare()
        self.informers.start()
        if self.elector is None:
            for runner in self.runners:
                runner.start_workers()
        else:
            self._election = asyncio.create_task(
                self.elector.run(self._started_leading, self._stopped_leading), name="leader-election"
            )

    async def _started_leading(self) -> None:
        log.info("leading: starting controllers %s", ", ".join(self.names))
        for runner in self.runners:
            runner.start_workers()

    async def _stopped_leading(self) -> None:
        for runner in self.runners:
            await runner.stop_workers()
        log.info("controllers %s stopped", ", ".join(self.names))

    async def stop(self) -> None:
        """Stop the workers, release the Lease if held, stop the informers."""
        if self._election is not None:
            self._election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._election
            self._election = None
        for runner in self.runners:
            await runner.stop()
        await self.informers.stop()
