"""Removes Workflows whose teardown Slurm will never call.

Two kinds are found:

* **Orphans**: Slurm no longer knows the job (slurmctld lost it, or purged it while the gateway was
  down). Both checks must agree: the job's directory under StateSaveLocation is gone and ``scontrol
  show job`` says the id is invalid.
* **Abandoned**: the job has ended and its burst buffer is settled (never staged in, torn down, or a
  teardown Slurm dropped), and no callback about it has reached the gateway for a while. Slurm 22.05
  drops a teardown when ``scancel`` lands during stage-in or pre-run: the cancel queues the teardown and
  the same cancel's flush kills it before it runs. A Workflow created at submission (Slurm 23.02+) of a
  job cancelled before stage-in never gets a teardown either.

When Slurm cannot be asked, nothing is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from slurmlink.resources.meta import parse_time
from slurmlink.slurm.commands import SlurmCommands
from slurmlink.slurm.gateway.activity import CallbackActivity
from slurmlink.slurm.gateway.config import ORIGIN_LABEL, ORIGIN_VALUE, GatewayConfig
from slurmlink.slurm.gateway.informer import Informer, WaitTimeout
from slurmlink.slurm.gateway.operations import BurstBufferOps, GatewayError

log = logging.getLogger(__name__)

#: A job must have been quiet (no callback) at least this long before its Workflow counts as abandoned,
#: however small ``sweep_min_age``: Slurm calls teardown within milliseconds of a job's end.
MIN_QUIET = 5.0
#: How long the gateway remembers when a job last called.
_ACTIVITY_MEMORY = 6 * 3600.0


class OrphanSweeper:
    def __init__(
        self,
        ops: BurstBufferOps,
        workflows: Informer,
        slurm: SlurmCommands,
        config: GatewayConfig,
        activity: CallbackActivity | None = None,
    ) -> None:
        self.ops = ops
        self.workflows = workflows
        self.slurm = slurm
        self.config = config
        self.activity = activity or CallbackActivity()
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
        """Tear down and delete orphaned and abandoned Workflows; returns their names."""
        if not self.workflows.synced.is_set() or self.workflows.unreachable_since is not None:
            return []
        swept = []
        quiet: list[tuple[str, str]] = []
        min_quiet = max(self.config.sweep_min_age, MIN_QUIET)
        for name, job_id in self.candidates():
            if not self.slurm.job_dir(job_id).exists() and await self.slurm.job_known(job_id) is False:
                log.warning("workflow %s: Slurm no longer knows job %s; tearing it down", name, job_id)
                await self._remove(name)
                swept.append(name)
                continue
            idle = self.activity.quiet_for(job_id)
            if idle is not None and idle >= min_quiet:
                quiet.append((name, job_id))
        if quiet:
            swept += await self._sweep_abandoned(quiet)
        self.activity.forget_quiet(_ACTIVITY_MEMORY)
        self.swept.extend(swept)
        return swept

    async def _sweep_abandoned(self, quiet: list[tuple[str, str]]) -> list[str]:
        statuses = await self.slurm.job_statuses()
        if statuses is None:
            return []
        swept = []
        for name, job_id in quiet:
            status = statuses.get(job_id)
            if status is None or not status.burst_buffer_settled or self.activity.quiet_for(job_id) is None:
                continue
            log.warning(
                "workflow %s: job %s ended (%s, BurstBufferState=%s) and Slurm will not call its teardown; "
                "tearing it down",
                name,
                job_id,
                status.state,
                status.burst_buffer_state or "none",
            )
            await self._remove(name)
            swept.append(name)
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
