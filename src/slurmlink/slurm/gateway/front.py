"""The gateway's sync lane: answers what slurmctld waits for under its job lock, forwards the rest.

slurmctld calls ``job_process`` (every ``sbatch``) and ``paths`` (every job start) while it holds its
job write lock, so each millisecond spent there is a millisecond in which no other job can be submitted.
The stage callbacks (setup through teardown) run in slurmctld's background threads and mostly wait for
drivers. A wave of stage-ins therefore must not delay a submission.

So ``slurmlink slurm gateway`` runs as two processes. The front owns the Lua's socket and answers the
lock-holding and read-only callbacks from its own caches at normal CPU priority, and ``pre_run``: a
started job holds its nodes until that answers, and it is light (the job's nodes read once at ``paths``,
two writes, then a wait on the watch). The worker (the full Gateway, including the sweeper) runs the
other stage callbacks at a lower priority in its own session and autogroup, behind an internal socket
that uses the same protocol. The front starts the worker, restarts
it if it dies, and stops it on exit; the worker exits when the front's pipe to it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from slurmlink import supervise
from slurmlink.client.base import Client
from slurmlink.resources.dws.directiverule import DW_DIRECTIVE_RULE
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.slurm.commands import SlurmCommands
from slurmlink.slurm.gateway.bank import STARTED_FIELD, BankView, bank_extend, bank_submit
from slurmlink.slurm.gateway.buffers import BufferView
from slurmlink.slurm.gateway.config import GatewayConfig
from slurmlink.slurm.gateway.informer import Informer, sync_problem
from slurmlink.slurm.gateway.operations import BurstBufferOps, Fields
from slurmlink.slurm.gateway.server import QUICK_OPERATIONS, GatewayServer, Operation
from slurmlink.slurm.gateway.worker_link import WorkerLink

log = logging.getLogger(__name__)

#: Callbacks the worker runs: they change Workflows and wait for drivers. (pre_run is the front's:
#: Slurm holds the job's nodes while it runs, and it costs two writes once the job has been read.)
FORWARDED = (
    "setup",
    "data_in",
    "post_run",
    "data_out",
    "teardown",
    # burst_buffer/datawarp (slurmlink dw-wlm-cli) only
    "sessions",
    "create_persistent",
    "destroy_persistent",
    # the bank's PrologSlurmctld and EpilogSlurmctld
    "bank_prolog",
    "bank_epilog",
)
#: Delay before restarting a worker that died: the first one, and the cap it doubles up to.
_RESTART_DELAY = (0.5, 10.0)


#: sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def worker_socket_path(socket_path: Path) -> Path:
    """The worker's internal socket, next to the Lua's; ValueError if that path is too long for AF_UNIX."""
    path = socket_path.with_name(socket_path.name + ".worker")
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ValueError(
            f"the gateway's worker socket {path} would be longer than {_MAX_SOCKET_PATH} bytes; "
            "choose a shorter --socket path"
        )
    return path


class FrontGateway:
    """Answers job_process, paths, pre_run, pools, real_size, status, test_data_*; forwards the rest."""

    def __init__(self, client: Client, config: GatewayConfig, link: WorkerLink) -> None:
        self.config = config
        self.link = link
        self.workflows = Informer(client, WORKFLOW, config.namespace)
        self.rules = Informer(client, DW_DIRECTIVE_RULE, config.rules_namespace)
        self.buffers = BufferView(client, config.namespace)
        self.ops = BurstBufferOps(
            client, config, self.workflows, self.rules, SlurmCommands(config.slurm_conf), self.buffers
        )
        self.bank = (
            BankView(client, config.bank, SlurmCommands(config.slurm_conf))
            if config.bank is not None
            else None
        )
        self.server = GatewayServer(
            config.socket_path, self.operations(), self.health, quick=QUICK_OPERATIONS
        )
        self._background: set[asyncio.Task[None]] = set()

    def operations(self) -> dict[str, Operation]:
        ops = self.ops
        table: dict[str, Operation] = {
            "job_process": self.job_process,
            "pools": ops.pools,
            "real_size": ops.real_size,
            "paths": ops.paths,
            "pre_run": ops.state_operation("PreRun"),
            "status": ops.status,
            "test_data_in": ops.test_operation("DataIn"),
            "test_data_out": ops.test_operation("DataOut"),
        }
        for name in FORWARDED:
            table[name] = self._forwarder(name)
        if self.bank is not None:
            bank = self.bank

            async def submit(fields: Fields) -> str:
                return await bank_submit(bank, fields)

            table["bank_submit"] = submit
            table["bank_extend"] = self._extend
            table["bank_prolog"] = self._prolog
        return table

    async def _extend(self, fields: Fields) -> str:
        """A running job's longer time limit: checked here, its hold raised by the worker afterwards."""
        assert self.bank is not None
        answer = await bank_extend(self.bank, fields)
        if answer != "accept 0":
            self._later(self._raise_hold(dict(fields)))
        return answer

    async def _raise_hold(self, fields: dict[str, str]) -> None:
        try:
            log.info("%s", await self.link.call("bank_raise_hold", fields))
        except Exception as exc:  # logged by the worker too; the charge at the end covers the rest
            log.warning("raising the hold of job %s failed: %s", fields.get("job_id"), exc)

    async def _prolog(self, fields: Fields) -> str:
        """The bank's hold, by the worker, on the job as this process read it at ``paths`` (if it did)."""
        sent = {k: v for k, v in fields.items() if k != STARTED_FIELD}
        try:
            line = await self.ops.slurm.started_line(fields.get("job_id", ""))
        except ValueError:  # not a job id: the worker says so
            line = ""
        if line:
            sent[STARTED_FIELD] = line
        return await self.link.call("bank_prolog", sent)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the answer (slurmctld holds its job lock until it has one)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forwarder(self, name: str) -> Operation:
        async def forward(fields: Fields) -> str:
            return await self.link.call(name, fields)

        return forward

    async def job_process(self, fields: Fields) -> str:
        """Check the directives here; Slurm 23.02+ also gets the Workflow created, by the worker, later."""
        await self.ops.job_process({k: v for k, v in fields.items() if k not in ("uid", "gid")})
        if fields.get("uid") and fields.get("gid"):
            self._later(self._create_at_submit(dict(fields)))
        return ""

    async def _create_at_submit(self, fields: dict[str, str]) -> None:
        try:
            await self.link.call("job_process", fields)
        except Exception as exc:  # setup creates the Workflow (and reports errors) if this fails
            log.warning("creating the workflow of job %s at submission failed: %s", fields.get("job_id"), exc)

    async def health(self) -> str | None:
        return sync_problem(self.workflows, self.rules) or await self.link.healthy()

    async def start(self) -> None:
        self.workflows.start()
        self.rules.start()
        self.buffers.start()
        if self.bank is not None:
            self.bank.start()
        await self.server.start()
        log.info("gateway listening on %s (namespace %s)", self.config.socket_path, self.config.namespace)

    async def stop(self) -> None:
        await self.server.stop()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background))
        await self.ops.aclose()
        if self.bank is not None:
            await self.bank.stop()
        await self.workflows.stop()
        await self.rules.stop()
        await self.buffers.stop()


class WorkerProcess:
    """Runs the worker command, restarts it when it dies, and stops it (closing its stdin) on request."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="gateway-worker")

    async def _spawn(self) -> None:
        # Its own session, so that lowering its priority moves its own autogroup (see cpu_priority).
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, start_new_session=True
        )
        log.info("gateway worker started (pid %d)", self.proc.pid)

    async def _supervise(self) -> None:
        delay = _RESTART_DELAY[0]
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error(
                "gateway worker (pid %d) exited with %s; restarting it in %.1f s", self.proc.pid, code, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_DELAY[1])
            await self._spawn()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the worker's cue to shut down cleanly
            await supervise.stop_child(proc, timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
