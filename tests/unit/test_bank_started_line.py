"""The bank's prolog prices the read of the job's start that the gateway's front made at ``paths``.

The front answers ``paths`` and ``pre_run`` and reads the starting job once (``note_start``); the
worker runs the bank's prolog. The front passes that read on as the ``squeue`` line it came from, so
the worker reads nothing again, and only the front may set it: a caller's own line is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from slurmlink.slurm.commands import CommandResult, SlurmCommands
from slurmlink.slurm.gateway.bank import STARTED_FIELD, BankHooks
from slurmlink.slurm.gateway.banksettings import BankSettings
from slurmlink.slurm.gateway.config import GatewayConfig
from slurmlink.slurm.gateway.front import FrontGateway, worker_socket_path
from slurmlink.slurm.gateway.server import GatewayServer
from slurmlink.slurm.gateway.worker_link import WorkerLink

LINE = (
    "42|alpha|physics|alice|1001|debug|(null)|RUNNING|1-02:03:00|1796463375|1796463376|1796556756|0|"
    "0:00|compute1|cpu=2,node=1|"
)


class SquelchedSlurm(SlurmCommands):
    """Slurm's commands with the ``squeue`` of a start answered by ``LINE``; records what ran."""

    def __init__(self) -> None:
        super().__init__(slurm_conf=None)
        self.argvs: list[tuple[str, ...]] = []

    async def run(self, *argv: str, env_extra: dict[str, str] | None = None) -> CommandResult:
        self.argvs.append(argv)
        if argv[0] == "squeue" and argv[1] == "--jobs=42":
            return CommandResult(0, LINE + "\n", "")
        return CommandResult(1, "", "slurm_load_jobs error: Invalid job id specified")


def _hooks(slurm: SlurmCommands) -> BankHooks:
    return BankHooks(None, slurm, BankSettings())  # type: ignore[arg-type]


def test_the_worker_takes_the_job_from_the_line_it_was_given() -> None:
    slurm = SquelchedSlurm()
    job = asyncio.run(_hooks(slurm)._started({"job_id": "42", "restart": "0", STARTED_FIELD: LINE}))
    assert job is not None and (job.job_id, job.account, job.node_list) == (42, "physics", "compute1")
    assert slurm.argvs == []


def test_a_line_of_another_job_or_run_or_none_at_all_is_not_taken() -> None:
    hooks = _hooks(SquelchedSlurm())
    assert asyncio.run(hooks._started({"job_id": "43", STARTED_FIELD: LINE})) is None
    assert asyncio.run(hooks._started({"job_id": "42", "restart": "1", STARTED_FIELD: LINE})) is None
    assert asyncio.run(hooks._started({"job_id": "42", STARTED_FIELD: "squeue: error"})) is None
    assert asyncio.run(hooks._started({"job_id": "42"})) is None  # nothing noted: the prolog reads it


def test_the_front_passes_its_own_read_and_drops_the_callers(tmp_path: Path) -> None:
    socket = tmp_path / "bb.sock"
    received: list[Mapping[str, str]] = []

    async def prolog(fields: Mapping[str, str]) -> str:
        received.append(dict(fields))
        return ""

    async def healthy() -> None:
        return None

    async def main() -> None:
        worker = GatewayServer(worker_socket_path(socket), {"bank_prolog": prolog}, healthy)
        await worker.start()
        config = GatewayConfig(socket_path=socket, bank=BankSettings())
        front = FrontGateway(None, config, WorkerLink(worker_socket_path(socket)))  # type: ignore[arg-type]
        slurm = SquelchedSlurm()
        front.ops.slurm = slurm
        try:
            forged = "42|alpha|free|alice|1001|debug|(null)|RUNNING|1:00|1|1|1|0|0:00|compute1|cpu=1|"
            await front._prolog({"job_id": "42", STARTED_FIELD: forged})  # no start noted
            slurm.note_start("42")  # paths
            await front._prolog({"job_id": "42", STARTED_FIELD: forged})
        finally:
            await worker.stop()
        assert received == [{"job_id": "42"}, {"job_id": "42", STARTED_FIELD: LINE}]
        assert [argv[:2] for argv in slurm.argvs] == [("squeue", "--jobs=42")]

    asyncio.run(asyncio.wait_for(main(), 20))
