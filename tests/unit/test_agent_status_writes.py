"""put_status: a status write that lost a race is retried on the fresh copy, unless it no longer applies.

A storage agent reports a copy's progress from the copying thread while its event loop writes the final
status. When a progress report lost the race (409) and was simply re-applied, it put a finished
DataMovement back to Running; the burst buffer driver, already past the stage, then cancelled it and the
job's copy ended "Cancelled" although every file had arrived. These tests run the real API service over a
real SQLite store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from slurmlink.agent.movements import unfinished
from slurmlink.agent.objects import put_status
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT
from slurmlink.server import bootstrap
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore

Obj = dict[str, Any]
RUNNING = {"state": "Running", "filesDone": 1, "bytesDone": 6}
FINISHED = {"state": "Finished", "status": "Success", "filesDone": 1, "bytesDone": 6}


def _service(tmp_path: Path) -> ResourceService:
    store = SqlStore(f"sqlite:///{tmp_path}/db")
    svc = ResourceService(store, default_registry(), WatchHub(store))
    bootstrap(svc, ServerConfig(state_dir=tmp_path))
    return svc


def _movement(svc: ResourceService) -> Obj:
    body = {
        "apiVersion": "slurmlink.io/v1",
        "kind": "DataMovement",
        "metadata": {"name": "m1"},
        "spec": {
            "source": {"path": "/home/u/a.txt"},
            "destination": {"path": "/results/a.txt"},
            "mode": "auto",
            "direction": "out",
            "node": "s1",
            "userID": 1000,
            "groupID": 1000,
        },
    }
    return svc.create(DATA_MOVEMENT, "v1", "default", body, SYSTEM)


async def _race(svc: ResourceService, **kwargs: Any) -> tuple[Obj | None, Obj]:
    """A progress report written from a copy read before the final status was: what it returns, and
    what is stored afterwards."""
    client = InProcessClient(svc)
    stale = await put_status(client, DATA_MOVEMENT, _movement(svc), {"state": "Running"})
    assert stale is not None
    await put_status(client, DATA_MOVEMENT, stale, FINISHED)  # the ending wins the race
    returned = await put_status(client, DATA_MOVEMENT, stale, RUNNING, **kwargs)
    return returned, await client.get(DATA_MOVEMENT, "default", "m1")


def test_a_late_progress_report_leaves_a_finished_copy_finished(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    returned, stored = asyncio.run(_race(svc, still_wanted=unfinished))
    assert stored["status"] == FINISHED
    assert returned is not None and returned["status"] == FINISHED  # the caller learns the fresh copy


def test_a_conflicting_write_without_a_condition_is_retried_on_the_fresh_copy(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    _returned, stored = asyncio.run(_race(svc))
    assert stored["status"] == RUNNING  # what the guarded report above must not do
