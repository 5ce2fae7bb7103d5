"""Leader election on a real store's Lease: one leader, release on shutdown, the observer's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.controllers.leaderelection import LeaderElectionConfig, LeaderElector
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.coordination import LEASE
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.watch import WatchEvent
from slurmlink.server import bootstrap
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from support.waiting import eventually

NS = "dws-system"
FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.25}


class Cuttable:
    """A client whose calls fail with 503 once ``down`` is set, as when a process is cut off."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ApiError(503, "ServiceUnavailable", "cut off")
            return await attr(*args, **kwargs)

        return call

    async def watch(self, kind: Kind, *args: Any, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        if self.down:
            raise ApiError(503, "ServiceUnavailable", "cut off")
        result: AsyncIterator[WatchEvent] = await self.inner.watch(kind, *args, **kwargs)
        return result


class Candidate:
    """An elector plus a log of when it started and stopped leading."""

    def __init__(self, client: Client, identity: str, log: list[tuple[float, str, str]]) -> None:
        self.client = client
        self.identity = identity
        self.informers = InformerFactory(client, retry_delay=0.1)
        self.elector = LeaderElector(
            client, LeaderElectionConfig("ctl", NS, identity, **FAST), self.informers
        )
        self.log = log
        self.task: asyncio.Task[None] | None = None

    async def _started(self) -> None:
        self.log.append((time.monotonic(), "started", self.identity))

    async def _stopped(self) -> None:
        self.log.append((time.monotonic(), "stopped", self.identity))

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._started, self._stopped))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.informers.stop()


def run(test: Callable[[ResourceService, Client], Awaitable[None]], tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path}/db")
        hub = WatchHub(store)
        svc = ResourceService(store, default_registry(), hub)
        bootstrap(svc, ServerConfig(state_dir=tmp_path))
        await hub.start()
        try:
            await test(svc, InProcessClient(svc))
        finally:
            await hub.stop()
            store.close()

    asyncio.run(main())


def holder(svc: ResourceService) -> str:
    try:
        lease = svc.get(LEASE, "v1", NS, "ctl")
    except ApiError:
        return ""
    return str(lease["spec"].get("holderIdentity") or "")


def test_one_leader_then_a_clean_handover(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: Client) -> None:
        log: list[tuple[float, str, str]] = []
        a, b = Candidate(client, "a", log), Candidate(client, "b", log)
        a.start()
        await eventually(lambda: a.elector.is_leader, "a to lead")
        b.start()
        await eventually(lambda: b.elector.observed_holder == "a", "b to see a's lease")
        await asyncio.sleep(FAST["lease_duration"] * 1.5)  # several renewals: b must keep standing by
        assert not b.elector.is_leader and holder(svc) == "a"
        lease = svc.get(LEASE, "v1", NS, "ctl")
        assert lease["spec"]["leaseTransitions"] == 0 and lease["spec"]["leaseDurationSeconds"] == 2
        stopped = time.monotonic()
        await a.stop()  # clean shutdown releases: b need not wait out the lease
        await eventually(lambda: b.elector.is_leader, "b to take over", timeout=5)
        took = next(t for t, what, who in log if what == "started" and who == "b") - stopped
        assert took < FAST["lease_duration"] / 2, took
        lease = svc.get(LEASE, "v1", NS, "ctl")
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
        await b.stop()
        assert holder(svc) == ""

    run(body, tmp_path)


def test_a_cut_off_leader_stops_before_the_standby_starts(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: Client) -> None:
        log: list[tuple[float, str, str]] = []
        cut = Cuttable(client)
        a, b = Candidate(cut, "a", log), Candidate(client, "b", log)  # type: ignore[arg-type]
        a.start()
        await eventually(lambda: a.elector.is_leader, "a to lead")
        b.start()
        await eventually(lambda: b.elector.observed_holder == "a", "b to see a's lease")
        cut.down = True
        await eventually(lambda: b.elector.is_leader, "b to take over", timeout=10)
        events = [(what, who) for _, what, who in log]
        assert events == [("started", "a"), ("stopped", "a"), ("started", "b")], events
        a_stopped = next(t for t, what, who in log if (what, who) == ("stopped", "a"))
        b_started = next(t for t, what, who in log if (what, who) == ("started", "b"))
        assert b_started > a_stopped
        await a.stop()
        await b.stop()

    run(body, tmp_path)


def test_expiry_is_judged_on_the_observers_clock(tmp_path: Path) -> None:
    """A lease whose renewTime is long past is still honoured for a full duration after it is first seen."""

    async def body(svc: ResourceService, client: Client) -> None:
        ancient = "2000-01-01T00:00:00.000000Z"
        lease: Obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "ctl", "namespace": NS},
            "spec": {
                "holderIdentity": "ghost",
                "leaseDurationSeconds": 2,
                "acquireTime": ancient,
                "renewTime": ancient,
                "leaseTransitions": 3,
            },
        }
        svc.create(LEASE, "v1", NS, lease, SYSTEM)
        log: list[tuple[float, str, str]] = []
        started = time.monotonic()
        c = Candidate(client, "c", log)
        c.start()
        await eventually(lambda: c.elector.is_leader, "c to take the abandoned lease", timeout=10)
        took = log[0][0] - started
        assert 2.0 <= took < 3.0, took
        spec = svc.get(LEASE, "v1", NS, "ctl")["spec"]
        assert spec["holderIdentity"] == "c" and spec["leaseTransitions"] == 4
        await c.stop()

    run(body, tmp_path)


def test_only_the_leading_manager_runs_its_controllers(tmp_path: Path) -> None:
    """Two managers (as two servers with controllers on one database): one acts, then the other."""
    from slurmlink.controllers.manager import Manager
    from slurmlink.resources.dws.workflow import WORKFLOW

    def config(identity: str) -> LeaderElectionConfig:
        return LeaderElectionConfig("ctl", NS, identity, **FAST)

    def working(manager: Manager) -> bool:
        return any(runner._tasks for runner in manager.runners)

    async def body(svc: ResourceService, client: Client) -> None:
        a = Manager(client, test_driver=True, election=config("a"))
        a.start()
        await eventually(lambda: a.leading and working(a), "a to lead and work")
        b = Manager(client, test_driver=True, election=config("b"))
        b.start()
        await b.wait_synced(10)
        assert not b.leading and not working(b)
        wf = {
            "apiVersion": "dataworkflowservices.github.io/v1alpha2",
            "kind": "Workflow",
            "metadata": {"name": "w1"},
            "spec": {"desiredState": "Proposal", "dwDirectives": ["#DW Proposal action=complete"],
                     "wlmID": "slurm", "jobID": "1", "userID": 990, "groupID": 990},
        }  # fmt: skip
        svc.create(WORKFLOW, "v1alpha2", "slurm", wf, SYSTEM)

        def ready(name: str) -> bool:
            return bool((svc.get(WORKFLOW, "v1alpha2", "slurm", name).get("status") or {}).get("ready"))

        await eventually(lambda: ready("w1"), "the leader to drive w1")
        await a.stop()
        await eventually(lambda: b.leading and working(b), "b to take over")
        svc.create(WORKFLOW, "v1alpha2", "slurm", {**wf, "metadata": {"name": "w2"}}, SYSTEM)
        await eventually(lambda: ready("w2"), "the new leader to drive w2")
        await b.stop()

    run(body, tmp_path)
