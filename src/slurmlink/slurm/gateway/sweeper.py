"""Removes Workflows whose Slurm job no longer exists (e.g. teardown never ran: slurmctld lost the job).

A Workflow is an orphan only when both checks agree: the job's directory under StateSaveLocation is
gone and ``scontrol show job`` says the id is invalid. When Slurm cannot be asked, nothing is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from slurmlink.resources.meta import parse_time
from slurmlink.slurm.commands import SlurmCommands
from slurmlink.slurm.gateway.config import ORIGIN_LABEL, ORIGIN_VALUE, GatewayConfig
from slurmlink.slurm.gateway.informer import Informer, WaitTimeout
from slurmlink.slurm.gateway.operations import BurstBufferOps, GatewayError

log = logging.getLogger(__name__)


class OrphanSweeper:
    def __init__(
        self, ops: BurstBufferOps, workflows: Informer, slurm: SlurmCommands, config: GatewayConfig
    ) -> None:
        self.ops = ops
        self.workflows = workflows
        self.slurm = slurm
        self.config = config
        self.swept: list[str] = []

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orphan sweep failed")

    def candidates(self) -> list[tuple[str, str]]:
        """(workflow name, job id) of our Workflows old enough to be considered."""
        now = time.time()
        found = []
        for name, obj in list(self.workflows.cache.items()):
            meta: dict[str, Any] = obj["metadata"]
            if (meta.get("labels") or {}).get(ORIGIN_LABEL) != ORIGIN_VALUE:
                continue
            job_id = str((obj.get("spec") or {}).get("jobID", ""))
            if not job_id.isdigit():
                continue
            try:
                created = parse_time(meta.get("creationTimestamp", "")).timestamp()
            except ValueError:
                continue
            if now - created >= self.config.sweep_min_age:
                found.append((name, job_id))
        return found

    async def sweep_once(self) -> list[str]:
        """Tear down and delete orphaned Workflows; returns their names."""
        if not self.workflows.synced.is_set() or self.workflows.unreachable_since is not None:
            return []
        swept = []
        for name, job_id in self.candidates():
            if self.slurm.job_dir(job_id).exists():
                continue
            if await self.slurm.job_known(job_id) is not False:
                continue
            log.warning("workflow %s: Slurm no longer knows job %s; tearing it down", name, job_id)
            await self._remove(name)
            swept.append(name)
        self.swept.extend(swept)
        return swept

    async def _remove(self, name: str) -> None:
        with contextlib.suppress(GatewayError):
            await self.ops._patch(name, {"spec": {"desiredState": "Teardown", "hurry": True}})
            # Give Teardown drivers a bounded chance to clean up, then delete regardless.
            with contextlib.suppress(WaitTimeout, GatewayError):
                await self.workflows.wait_for(
                    name, self.ops._state_probe(name, "Teardown"), timeout=self.config.api_timeout
                )
        with contextlib.suppress(GatewayError):
            await self.ops._delete(name)
