"""The partition publisher against a real ``slurmlink serve``: Slurm's partitions, as captured from Slurm
22.05 (``tests/unit/data/partitions``) and parsed by discovery, become Partitions that jobs are judged
against, that the virtual Nodes show, and that follow Slurm from refresh to refresh without a write
when nothing changed.

pytest-asyncio is not available: each test drives its coroutine with ``asyncio.run``. Every test starts
from an API without Partitions or SlurmJobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmlink.bridge.publisher import (
    PartitionPublisher,
    PublishSummary,
    assign_names,
    partition_object,
    publish,
)
from slurmlink.client.http import HttpClient
from slurmlink.resources.bridge.node import node_kind
from slurmlink.resources.bridge.partition import PARTITION
from slurmlink.resources.bridge.slurmjob import SLURM_JOB
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Obj
from slurmlink.slurm.commands import CommandResult, SlurmCommands
from slurmlink.slurm.partition_config import parse_partition_config
from slurmlink.slurm.partitions import (
    SCONTROL_ARGV,
    SINFO_ARGV,
    ExtraFeature,
    Partition,
    parse_partitions,
)
from support.server import ServerProcess

DATA = Path(__file__).parents[1] / "unit" / "data" / "partitions"
SCONTROL = (DATA / "scontrol-show-partition.txt").read_text()
SINFO = (DATA / "sinfo-nodes.txt").read_text()
CLUSTER = "lab"


async def _no_partitions() -> list[Obj]:
    return []


NODE = node_kind(_no_partitions)  # the client needs only its group, version and plural

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An API server without controllers: objects change only when the publisher or the test writes."""
    srv = ServerProcess(tmp_path_factory.mktemp("publish") / "state", extra_args=("--no-controllers",))
    srv.start()
    yield srv
    srv.stop()


async def _clear(client: HttpClient) -> None:
    for kind in (SLURM_JOB, PARTITION):
        items, _ = await client.list(kind, None)
        for obj in items:
            await client.delete(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])


@pytest.fixture
def kubeconfig(server: ServerProcess) -> Path:
    """The admin's kubeconfig (the bridge acts as admin), on an API emptied of Partitions and jobs."""
    asyncio.run(_with_client(server.kubeconfig, _clear))
    return server.kubeconfig


async def _with_client(path: Path, body: Any) -> Any:
    async with HttpClient.from_kubeconfig(path) as client:
        return await body(client)


def records(scontrol: str = SCONTROL, sinfo: str = SINFO) -> list[Partition]:
    return parse_partitions(scontrol, sinfo)


def without(name: str, scontrol: str = SCONTROL) -> str:
    """``scontrol`` output without partition ``name``: Slurm dropped it."""
    return "".join(
        line for line in scontrol.splitlines(keepends=True) if not line.startswith(f"PartitionName={name} ")
    )


async def partitions(client: HttpClient) -> dict[str, Obj]:
    items, _ = await client.list(PARTITION)
    return {obj["metadata"]["name"]: obj for obj in items}


def rv(obj: Obj) -> str:
    return str(obj["metadata"]["resourceVersion"])


def slurmjob(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "slurmlink.io/v1",
        "kind": "SlurmJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"script": "#!/bin/sh\necho hi\n", **spec},
    }


# ---- the object for one record ---------------------------------------------------------------------


def test_partition_object_maps_every_field() -> None:
    by_name = {r.name: r for r in records()}
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=dt.UTC)

    open_ = partition_object(by_name["open"], CLUSTER, when)
    assert open_["apiVersion"] == "slurmlink.io/v1" and open_["kind"] == "Partition"
    assert open_["metadata"] == {"name": "open"}
    assert open_["spec"] == {
        "slurmName": "open",
        "cluster": CLUSTER,
        "default": True,
        "nodes": "compute1,compute2",
        "totalNodes": 2,
        "cpusPerNode": 2,
        "memoryPerNode": "23081Mi",  # the nodes' memory: no partition limit cuts it
        "maxTime": None,
        "defaultTime": None,
        "maxNodesPerJob": None,
        "features": ["gpu", "cuda"],  # on compute2 only, but a --constraint on them runs there
        "gres": [],
        "allowedAccounts": None,
        "allowedQOS": None,
        "extraFeatures": [],
    }
    assert open_["status"] == {
        "state": "UP",
        "totalCPUs": 4,
        "idleCPUs": 3,
        "allocatedCPUs": 1,
        "observedTime": "2026-01-02T03:04:05Z",
    }

    short = partition_object(by_name["short"], CLUSTER, when)["spec"]
    assert (short["maxTime"], short["defaultTime"], short["maxNodesPerJob"]) == (30, 10, 1)
    assert short["memoryPerNode"] == "2048Mi"  # MaxMemPerNode=2048 below the nodes' 23081
    assert short["allowedAccounts"] == ["physics", "chemistry"] and short["allowedQOS"] is None

    gpu = partition_object(by_name["GPU_Short"], CLUSTER, when)
    assert gpu["metadata"]["name"] == "gpu-short" and gpu["spec"]["slurmName"] == "GPU_Short"
    assert gpu["spec"]["maxTime"] == 2 * 24 * 60 and gpu["spec"]["nodes"] == "compute2"
    assert gpu["spec"]["memoryPerNode"] == "2048Mi"  # MaxMemPerCPU=1024 times the node's 2 CPUs
    assert gpu["spec"]["allowedQOS"] == ["normal"] and gpu["spec"]["features"] == ["gpu", "cuda"]

    # The admin's overrides and extra features are published as discovery applied them.
    config = parse_partition_config(
        '[partition.GPU_Short]\nextra_features = [{name = "cuda", version = "12.2", quantity = 4}]\n'
        'max_time = "UNLIMITED"\ncpus_per_node = 8\n'
    )
    overridden = partition_object(config.apply([by_name["GPU_Short"]])[0], CLUSTER, when)["spec"]
    assert overridden["extraFeatures"] == [{"name": "cuda", "version": "12.2", "quantity": 4}]
    assert overridden["maxTime"] is None and overridden["cpusPerNode"] == 8
    assert overridden["memoryPerNode"] == "8192Mi"  # MaxMemPerCPU times the advertised CPUs


# ---- publishing ------------------------------------------------------------------------------------


def test_publish_creates_partitions_with_nulls_for_unlimited(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        summary = await publish(client, records(), CLUSTER)
        assert summary.created == ("open", "short", "gpu-short", "memquirk")
        assert summary.writes == 8  # a create and its /status per partition
        assert summary.changed and not summary.failed

        got = await partitions(client)
        assert sorted(got) == ["gpu-short", "memquirk", "open", "short"]  # maint is hidden
        open_ = got["open"]
        for key in ("maxTime", "defaultTime", "maxNodesPerJob", "allowedAccounts", "allowedQOS"):
            assert key in open_["spec"] and open_["spec"][key] is None, key  # null, never 0 or []
        assert got["memquirk"]["spec"]["memoryPerNode"] == "23081Mi"  # Slurm's 64-bit infinity: no limit
        assert open_["status"]["state"] == "UP" and open_["status"]["idleCPUs"] == 3
        assert open_["metadata"]["labels"] == {
            "slurmlink.io/partition": "open",
            "slurmlink.io/cluster": CLUSTER,
            "slurmlink.io/default": "true",
            "feature.slurmlink.io/gpu": "true",
            "feature.slurmlink.io/cuda": "true",
        }
        gpu = got["gpu-short"]
        assert gpu["spec"]["slurmName"] == "GPU_Short"
        assert gpu["metadata"]["labels"]["slurmlink.io/partition"] == "GPU_Short"
        assert gpu["status"]["observedTime"].endswith("Z")

    asyncio.run(_with_client(kubeconfig, body))


def test_unchanged_refresh_writes_nothing(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        await publish(client, records(), CLUSTER)
        before = {name: rv(obj) for name, obj in (await partitions(client)).items()}

        for _ in range(2):
            summary = await publish(client, records(), CLUSTER)
            assert summary == PublishSummary(unchanged=("open", "short", "gpu-short", "memquirk"))
        assert {name: rv(obj) for name, obj in (await partitions(client)).items()} == before

        # A job ending on compute2 is a status change of the partitions over it, and only that.
        idle = records(sinfo=SINFO.replace("1/1/0/2", "0/2/0/2"))
        summary = await publish(client, idle, CLUSTER)
        assert (summary.updated, summary.writes) == (("open", "short", "gpu-short"), 3)
        after = await partitions(client)
        assert after["gpu-short"]["status"]["idleCPUs"] == 2
        assert rv(after["memquirk"]) == before["memquirk"]  # compute1 only

    asyncio.run(_with_client(kubeconfig, body))


def test_admin_labels_and_annotations_survive_refreshes(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        await publish(client, records(), CLUSTER)
        await client.patch(
            PARTITION,
            None,
            "open",
            {
                "metadata": {
                    "labels": {"wlm.sylabs.io/containers": "singularity"},
                    "annotations": {"site.example/owner": "hpc-team"},
                }
            },
        )
        # Slurm changes: open is no longer the default and gets a time limit.
        changed = SCONTROL.replace("Default=YES", "Default=NO").replace(
            "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=compute[1-2]",
            "MaxTime=04:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=compute[1-2]",
            1,
        )
        summary = await publish(client, records(changed), CLUSTER)
        assert summary.updated == ("open",) and summary.writes == 1  # the spec; the status is the same

        open_ = (await partitions(client))["open"]
        assert open_["spec"]["maxTime"] == 240 and open_["spec"]["default"] is False
        labels = open_["metadata"]["labels"]
        assert labels["wlm.sylabs.io/containers"] == "singularity"
        assert "slurmlink.io/default" not in labels  # the kind's own labels follow the spec
        assert open_["metadata"]["annotations"]["site.example/owner"] == "hpc-team"

        assert (await publish(client, records(changed), CLUSTER)).writes == 0
        assert (await partitions(client))["open"]["metadata"]["labels"] == labels

    asyncio.run(_with_client(kubeconfig, body))


def test_vanished_partition_goes_gone_then_is_deleted(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        await publish(client, records(), CLUSTER)
        dropped = records(without("short"))

        summary = await publish(client, dropped, CLUSTER)
        assert (summary.gone, summary.deleted, summary.writes) == (("short",), (), 1)
        short = (await partitions(client))["short"]
        assert short["status"]["state"] == "GONE"
        # Jobs naming it are refused with the reason while it is GONE.
        with pytest.raises(ApiError) as refused:
            await client.create(SLURM_JOB, slurmjob("late", partition="short"))
        assert refused.value.code == 422 and "no longer exists in Slurm" in str(refused.value.details)

        summary = await publish(client, dropped, CLUSTER)
        assert (summary.gone, summary.deleted) == ((), ("short",))
        assert "short" not in await partitions(client)
        assert (await publish(client, dropped, CLUSTER)).writes == 0

        # Back in Slurm: published again. One that comes back while GONE is simply UP again.
        assert (await publish(client, records(), CLUSTER)).created == ("short",)
        await publish(client, records(without("memquirk")), CLUSTER)
        summary = await publish(client, records(), CLUSTER)
        assert summary.updated == ("memquirk",)
        assert (await partitions(client))["memquirk"]["status"]["state"] == "UP"

    asyncio.run(_with_client(kubeconfig, body))


def test_other_clusters_partitions_are_untouched(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        theirs = await client.create(
            PARTITION,
            {
                "apiVersion": "slurmlink.io/v1",
                "kind": "Partition",
                "metadata": {"name": "open"},
                "spec": {"slurmName": "open", "cluster": "other", "totalNodes": 8, "maxTime": 10},
            },
        )
        summary = await publish(client, records(), CLUSTER)
        assert summary.created == ("open-2", "short", "gpu-short", "memquirk")  # its slug was taken
        for _ in range(2):  # neither GONE nor deleted: it is not ours
            await publish(client, [], CLUSTER)
        got = await partitions(client)
        assert list(got) == ["open"] and rv(got["open"]) == rv(theirs)

        # Ours come back under the first free names; the other cluster's stays as it was.
        assert (await publish(client, records(), CLUSTER)).created[0] == "open-2"
        got = await partitions(client)
        assert got["open-2"]["spec"]["cluster"] == CLUSTER and rv(got["open"]) == rv(theirs)

    asyncio.run(_with_client(kubeconfig, body))


def test_colliding_slugs_get_stable_suffixes(kubeconfig: Path) -> None:
    twin = SCONTROL.splitlines(keepends=True)[2].replace("PartitionName=GPU_Short", "PartitionName=gpu-short")
    assert twin.startswith("PartitionName=gpu-short ")

    async def body(client: HttpClient) -> None:
        summary = await publish(client, records(SCONTROL + twin), CLUSTER)
        assert summary.created == ("open", "short", "gpu-short", "memquirk", "gpu-short-2")
        got = await partitions(client)
        assert got["gpu-short"]["spec"]["slurmName"] == "GPU_Short"
        assert got["gpu-short-2"]["spec"]["slurmName"] == "gpu-short"
        # Their virtual Nodes are named after the objects, so they are two Nodes too.
        nodes, _ = await client.list(NODE)
        names = {n["metadata"]["name"] for n in nodes}
        assert {f"slurm-{CLUSTER}-gpu-short", f"slurm-{CLUSTER}-gpu-short-2"} <= names

        # Slurm lists them the other way round: each keeps its name, nothing is written.
        swapped = twin + SCONTROL
        assert (await publish(client, records(swapped), CLUSTER)).writes == 0
        got = await partitions(client)
        assert got["gpu-short-2"]["spec"]["slurmName"] == "gpu-short"

    asyncio.run(_with_client(kubeconfig, body))


def test_suffixed_names_stay_dns_labels() -> None:
    """Slugs are cut at 63 characters, so long names collide too; their suffixes fit in the 63."""
    base = records()[0]
    long_ = [dataclasses.replace(base, name=prefix * 15 + "0") for prefix in ("Long_", "long-", "LONG.")]
    names = [assign_names(long_, [], [])[r.name] for r in long_]
    assert names[0] == "long-" * 12 + "lon"  # 63 characters
    assert names[1:] == [names[0][:61].rstrip("-") + "-2", names[0][:61].rstrip("-") + "-3"]
    assert all(len(name) <= 63 for name in names)


def test_a_refused_partition_does_not_stop_the_others(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        bad = dataclasses.replace(records()[1], extra_features=(ExtraFeature("cuda", "12.2 beta", 1),))
        summary = await publish(client, [records()[0], bad, *records()[2:]], CLUSTER)
        assert summary.created == ("open", "gpu-short", "memquirk")
        ((name, message),) = summary.failed
        assert name == "short" and "spec.extraFeatures[0]" in message
        assert "failed short: " in summary.describe()

    asyncio.run(_with_client(kubeconfig, body))


def test_jobs_are_judged_against_published_partitions(kubeconfig: Path) -> None:
    async def refused(client: HttpClient, job: Obj) -> dict[str, str]:
        """The fields and messages of the 422 that refuses ``job``."""
        with pytest.raises(ApiError) as caught:
            await client.create(SLURM_JOB, job)
        assert caught.value.code == 422 and caught.value.details, caught.value
        return {c["field"]: c["message"] for c in caught.value.details["causes"]}

    async def body(client: HttpClient) -> None:
        await publish(client, records(), CLUSTER)
        wide = await refused(client, slurmjob("wide", partition="short", resources={"nodes": 2}))
        assert wide == {
            "spec.resources.nodes": 'Invalid value: 2: partition "short" allows at most 1 nodes per job'
        }
        slow = await refused(client, slurmjob("slow", partition="short", resources={"timeLimit": "1:00:00"}))
        assert "allows at most 30" in slow["spec.resources.timeLimit"]
        fat = await refused(
            client, slurmjob("fat", partition="GPU_Short", resources={"memoryPerNode": "4Gi"})
        )
        assert 'partition "GPU_Short" has 2048Mi of memory per node' in fat["spec.resources.memoryPerNode"]
        chem = await refused(client, slurmjob("chem", partition="short", account="biology"))
        assert "(allowed: physics, chemistry)" in chem["spec.account"]
        hidden = await refused(client, slurmjob("hidden", partition="maint"))
        assert "no such partition" in hidden["spec.partition"]

        # The default partition (open) is unlimited: its nulls refuse nothing.
        unlimited = {"timeLimit": "UNLIMITED", "nodes": 2, "constraints": "gpu"}
        await client.create(SLURM_JOB, slurmjob("long", resources=unlimited))
        await client.create(
            SLURM_JOB, slurmjob("fits", partition="short", account="physics", resources={"nodes": 1})
        )
        labels = {"feature.slurmlink.io/cuda": "true", "slurmlink.io/cluster": CLUSTER}
        await client.create(SLURM_JOB, slurmjob("gpu", partitionSelector={"matchLabels": labels}))

    asyncio.run(_with_client(kubeconfig, body))


def test_nodes_show_one_node_per_published_partition(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        await publish(client, records(), CLUSTER)
        nodes, _ = await client.list(NODE)
        by_name = {node["metadata"]["name"]: node for node in nodes}
        assert sorted(by_name) == [
            "slurm-lab-gpu-short",
            "slurm-lab-memquirk",
            "slurm-lab-open",
            "slurm-lab-short",
        ]
        gpu = by_name["slurm-lab-gpu-short"]["metadata"]["labels"]
        assert gpu["wlm.sylabs.io/partition"] == "GPU_Short"
        assert gpu["wlm.sylabs.io/wall-time"] == str(2 * 24 * 3600)
        assert gpu["wlm.sylabs.io/mem-per-node"] == "2048"
        open_ = by_name["slurm-lab-open"]["metadata"]["labels"]
        assert "wlm.sylabs.io/wall-time" not in open_  # unlimited: no label, never 0
        assert open_["wlm.sylabs.io/nodes"] == "2"  # no MaxNodes: the partition's node count
        ready = by_name["slurm-lab-open"]["status"]["conditions"][0]
        assert (ready["type"], ready["status"]) == ("Ready", "True")

    asyncio.run(_with_client(kubeconfig, body))


# ---- the refresh loop ------------------------------------------------------------------------------


class FakeSlurm(SlurmCommands):
    """Answers the two discovery commands with captured text; ``fail`` makes scontrol fail."""

    def __init__(self) -> None:
        super().__init__(None)
        self.scontrol, self.sinfo = SCONTROL, SINFO
        self.fail: str | None = None
        self.calls: list[tuple[str, ...]] = []

    async def run(self, *argv: str, env_extra: dict[str, str] | None = None) -> CommandResult:
        self.calls.append(argv)
        if argv == SCONTROL_ARGV:
            if self.fail:
                return CommandResult(1, "", self.fail)
            return CommandResult(0, self.scontrol, "")
        assert argv == SINFO_ARGV, argv
        return CommandResult(0, self.sinfo, "")


class CountedPublisher(PartitionPublisher):
    """Tells the test each time a refresh has ended (by the time the test runs, ``run`` has logged it)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.refreshes: asyncio.Queue[None] = asyncio.Queue()

    async def refresh(self) -> PublishSummary:
        try:
            return await super().refresh()
        finally:
            self.refreshes.put_nowait(None)

    async def refreshed(self) -> None:
        async with asyncio.timeout(20):
            await self.refreshes.get()


def test_refresh_runs_two_commands_then_publishes(kubeconfig: Path) -> None:
    async def body(client: HttpClient) -> None:
        slurm = FakeSlurm()
        config = parse_partition_config("[partition.maint]\nhidden = false\n")
        publisher = PartitionPublisher(client, slurm, CLUSTER, config=config)
        summary = await publisher.refresh()
        assert sorted(slurm.calls) == sorted([SCONTROL_ARGV, SINFO_ARGV])
        assert "maint" in summary.created  # the admin unhid it
        assert publisher.last_summary == summary

    asyncio.run(_with_client(kubeconfig, body))


def test_run_survives_errors_and_refreshes_when_poked(
    kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = "slurmlink.bridge.publisher"
    caplog.set_level(logging.INFO, logger=logger)

    def logged(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]

    async def body(client: HttpClient) -> None:
        slurm = FakeSlurm()
        publisher = CountedPublisher(client, slurm, CLUSTER, interval=3600)
        task = asyncio.create_task(publisher.run())
        try:
            await publisher.refreshed()
            assert logged(logging.INFO) == [
                "cluster lab: Partitions: created open, short, gpu-short, memquirk"
            ]
            published = {name: rv(obj) for name, obj in (await partitions(client)).items()}

            # Slurm cannot be asked: one line, the Partitions stay, the loop goes on.
            slurm.fail = "scontrol: error: Unable to contact slurm controller (connect failure)"
            publisher.poke()  # long before the hour is up
            await publisher.refreshed()
            assert not task.done()
            assert publisher.last_error is not None and "Unable to contact" in publisher.last_error
            (warning,) = logged(logging.WARNING)
            assert "\n" not in warning and "Unable to contact slurm controller" in warning, warning
            assert "stay as last published" in warning
            assert {name: rv(obj) for name, obj in (await partitions(client)).items()} == published

            slurm.fail = None
            slurm.scontrol = without("memquirk")
            publisher.poke()
            await publisher.refreshed()
            assert publisher.last_error is None
            assert logged(logging.INFO)[-2:] == [
                "cluster lab: partitions are published again",
                "cluster lab: Partitions: gone memquirk",
            ]
            assert len(slurm.calls) == 6
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(_with_client(kubeconfig, body))
