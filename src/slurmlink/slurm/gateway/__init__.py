"""The burst buffer gateway: the local daemon burst_buffer.lua talks to (docs/slurm-plugin.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from slurmlink.client.base import Client
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.slurm.commands import SlurmCommands
from slurmlink.slurm.gateway.activity import CallbackActivity
from slurmlink.slurm.gateway.bank import BankHooks
from slurmlink.slurm.gateway.buffers import BufferView
from slurmlink.slurm.gateway.config import GatewayConfig
from slurmlink.slurm.gateway.datawarp import DataWarpOps
from slurmlink.slurm.gateway.informer import Informer, sync_problem
from slurmlink.slurm.gateway.operations import BurstBufferOps, GatewayError
from slurmlink.slurm.gateway.pacing import SetupPacer
from slurmlink.slurm.gateway.server import QUICK_OPERATIONS, GatewayServer, Operation
from slurmlink.slurm.gateway.sweeper import OrphanSweeper

__all__ = ["Gateway", "GatewayConfig", "GatewayError"]

log = logging.getLogger(__name__)


class Gateway:
    """Informers + operations + socket server + sweeper, started and stopped together."""

    def __init__(self, client: Client, config: GatewayConfig, slurm: SlurmCommands | None = None) -> None:
        self.client = client
        self.config = config
        self.slurm = slurm or SlurmCommands(config.slurm_conf)
        self.workflows = Informer(client, WORKFLOW, config.namespace)
        self.rules = Informer(client, DW_DIRECTIVE_RULE, config.rules_namespace)
        self.buffers = BufferView(client, config.namespace)
        self.ops = BurstBufferOps(client, config, self.workflows, self.rules, self.slurm, self.buffers)
        self.datawarp = DataWarpOps(self.ops)
        self.activity = CallbackActivity()
        self.sweeper = OrphanSweeper(self.ops, self.workflows, self.slurm, config, self.activity)
        self.bank = BankHooks(client, self.slurm, config.bank) if config.bank is not None else None
        self.setups = SetupPacer(config.setups_at_once) if config.setups_at_once > 0 else None
        self.server = GatewayServer(
            config.socket_path, self.operations(), self.health, self.activity, quick=QUICK_OPERATIONS
        )
        self._sweep_task: asyncio.Task[None] | None = None

    def operations(self) -> dict[str, Operation]:
        ops = self.ops
        return {
            "job_process": ops.job_process,
            "pools": ops.pools,
            "setup": self.setups.pace(ops.setup) if self.setups is not None else ops.setup,
            "data_in": ops.state_operation("DataIn"),
            "test_data_in": ops.test_operation("DataIn"),
            "real_size": ops.real_size,
            "paths": ops.paths,
            "pre_run": ops.state_operation("PreRun"),
            "post_run": ops.state_operation("PostRun"),
            "data_out": ops.state_operation("DataOut"),
            "test_data_out": ops.test_operation("DataOut"),
            "teardown": ops.teardown,
            "status": ops.status,
            # burst_buffer/datawarp (slurmlink dw-wlm-cli) only
            "sessions": self.datawarp.sessions,
            "create_persistent": self.datawarp.create_persistent,
            "destroy_persistent": self.datawarp.destroy_persistent,
            **(
                {
                    "bank_prolog": self.bank.prolog,
                    "bank_epilog": self.bank.epilog,
                    "bank_raise_hold": self.bank.raise_hold,
                }
                if self.bank is not None
                else {}
            ),
        }

    async def health(self) -> str | None:
        return sync_problem(self.workflows, self.rules)

    async def start(self) -> None:
        self.workflows.start()
        self.rules.start()
        self.buffers.start()
        await self.server.start()
        if self.config.sweep_interval > 0:
            self._sweep_task = asyncio.create_task(self.sweeper.run_forever(), name="orphan-sweeper")
        if self.bank is not None:
            self.bank.start()
        log.info("gateway listening on %s (namespace %s)", self.config.socket_path, self.config.namespace)

    async def stop(self) -> None:
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep_task
        await self.server.stop()
        if self.bank is not None:
            await self.bank.stop()
        await self.ops.aclose()
        await self.workflows.stop()
        await self.rules.stop()
        await self.buffers.stop()
