"""A job's compute nodes are written into its Computes once Slurm has given them (paths), ahead of pre_run.

slurmctld calls paths when it has allocated the job's nodes and pre_run right after. paths starts on the
Computes once it has its answer (``prepare_pre_run``), so reading the nodes from slurmctld and writing
them overlaps the start of pre_run. pre_run then takes that work, or does it again when it failed. The
harness's system is real (store, controllers, test driver, Gateway over its socket); only the job's
nodes come from a stand-in for ``scontrol show job``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from slurmlink.burstbuffer.names import BUFFERS_ANNOTATION
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.slurm.commands import JobNodes
from support.gateway import NAMESPACE, GatewayHarness, RecordingSlurm
from support.waiting import eventually

SCRIPT = "#!/bin/bash\n#DW PreRun action=complete\n/bin/true\n"


class NodesSlurm(RecordingSlurm):
    """What ``scontrol show job`` would say of each job's nodes; records who asked."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.nodes: dict[str, tuple[str, ...]] = {}
        self.asked: list[str] = []

    async def job_nodes(self, job_id: str) -> JobNodes:
        self.asked.append(job_id)
        names = self.nodes.get(job_id, ())
        return JobNodes(len(names) or 1, names)


def _computes(h: GatewayHarness, name: str) -> list[str]:
    obj = h.svc.get(COMPUTES, "v1alpha2", NAMESPACE, name)
    return [entry["name"] for entry in obj.get("data") or []]


async def _job_with_a_mounted_buffer(h: GatewayHarness, job_id: str) -> None:
    """Set up as Slurm does, then give the Workflow the driver's record of a ``jobdw`` buffer (the
    test driver, which completes the states here, makes none)."""
    fields = h.job_fields(job_id, SCRIPT)
    assert await h.call("setup", **fields) == (200, "")
    assert await h.call("data_in", job_id=job_id) == (200, "")
    buffers = [{"command": "jobdw", "name": "s", "servers": f"bb{job_id}-0"}]
    h.merge_patch(f"bb{job_id}", {"metadata": {"annotations": {BUFFERS_ANNOTATION: json.dumps(buffers)}}})
    await h.cached(f"bb{job_id}", lambda obj: BUFFERS_ANNOTATION in obj["metadata"].get("annotations", {}))


def _run(body: object, tmp_path: Path) -> None:
    async def main() -> None:
        slurm = NodesSlurm(tmp_path)
        async with GatewayHarness(slurm=slurm) as h:
            await asyncio.wait_for(body(h, slurm), 20)  # type: ignore[operator]

    asyncio.run(main())


def test_the_nodes_are_written_after_paths_and_pre_run_does_not_ask_again(tmp_path: Path) -> None:
    async def body(h: GatewayHarness, slurm: NodesSlurm) -> None:
        await _job_with_a_mounted_buffer(h, "31")
        slurm.nodes["31"] = ("compute1", "compute2")
        status, env = await h.call("paths", job_id="31")
        assert (status, env.splitlines()[0]) == (200, "DW_WORKFLOW_NAME=bb31")
        await eventually(lambda: _computes(h, "bb31") == ["compute1", "compute2"], "bb31's Computes")
        assert await h.call("pre_run", job_id="31") == (200, "")
        assert slurm.asked == ["31"] and slurm.noted_starts == ["31"]
        assert h.get("bb31")["status"]["state"] == "PreRun"  # type: ignore[index]

    _run(body, tmp_path)


def test_pre_run_asks_again_when_slurm_showed_no_nodes_at_paths(tmp_path: Path) -> None:
    async def body(h: GatewayHarness, slurm: NodesSlurm) -> None:
        await _job_with_a_mounted_buffer(h, "32")
        assert (await h.call("paths", job_id="32"))[0] == 200
        await eventually(lambda: slurm.asked == ["32"], "the nodes of job 32 to be asked for")
        slurm.nodes["32"] = ("compute2",)
        assert await h.call("pre_run", job_id="32") == (200, "")
        assert slurm.asked == ["32", "32"] and _computes(h, "bb32") == ["compute2"]

    _run(body, tmp_path)


def test_without_paths_pre_run_writes_the_nodes_itself(tmp_path: Path) -> None:
    async def body(h: GatewayHarness, slurm: NodesSlurm) -> None:
        await _job_with_a_mounted_buffer(h, "33")
        slurm.nodes["33"] = ("compute1",)
        assert await h.call("pre_run", job_id="33") == (200, "")
        assert slurm.asked == ["33"] and _computes(h, "bb33") == ["compute1"]

    _run(body, tmp_path)
