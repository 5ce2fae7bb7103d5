"""Kill -9 of ``slurmlink serve`` in the middle of workflows, restart on the same state: nothing lost.

Runs on the default store (SQLite in the state directory) and on PostgreSQL. Clients retry only
transport failures (the server is down or went away mid-request); every write that got its 2xx
answer before a kill must be visible after the restart. Waits poll with deadlines.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurmlink.store.sql import SqlStore
from support.server import ServerProcess

GROUP_VERSION = "dataworkflowservices.github.io/v1alpha2"
WORKFLOWS = f"/apis/{GROUP_VERSION}/namespaces/slurm/workflows"
COMPUTES = f"/apis/{GROUP_VERSION}/namespaces/slurm/computes"
MERGE = {"content-type": "application/merge-patch+json"}
JSON_PATCH = {"content-type": "application/json-patch+json"}
STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
DIRECTIVES = ["#DW Proposal action=complete", "#DW Setup action=wait"]
#: The seed's JSON patch that releases the ``#DW Setup action=wait`` driver: entry 1 of
#: status.drivers (entry 0 is the Proposal directive's, as the test checks before using it).
RELEASE_SETUP = [
    {"op": "replace", "path": "/status/drivers/1/status", "value": "Completed"},
    {"op": "replace", "path": "/status/drivers/1/completed", "value": True},
]

Obj = dict[str, Any]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None: the server's default SQLite file in its state dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_dsn"))


def workflow(name: str, job_id: int) -> Obj:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": "slurm"},
        "spec": {
            "desiredState": "Proposal",
            "wlmID": "slurm",
            "jobID": job_id,
            "userID": 1000,
            "groupID": 1000,
            "dwDirectives": DIRECTIVES,
        },
    }


def rv(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def call(client: httpx.Client, method: str, url: str, *, timeout: float = 60.0, **kw: Any) -> httpx.Response:
    """One request, repeated while the server is unreachable (killed, restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.request(method, url, **kw)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.03)


def wait_workflow(
    client: httpx.Client, name: str, check: Callable[[Obj], bool], timeout: float = 30.0
) -> Obj:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        r = call(client, "GET", f"{WORKFLOWS}/{name}", timeout=max(1.0, deadline - time.monotonic()))
        if r.status_code == 200:
            last = r.json()
            if check(last):
                return dict(last)
        time.sleep(0.02)
    raise AssertionError(f"workflow {name} never matched; last seen: {json.dumps(last)[:3000]}")


def wait_gone(client: httpx.Client, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while call(client, "GET", path).status_code != 404:
        assert time.monotonic() < deadline, f"{path} was never removed"
        time.sleep(0.02)


def ready_in(state: str) -> Callable[[Obj], bool]:
    return lambda o: (o.get("status") or {}).get("state") == state and o["status"].get("ready") is True


def driver_wait_in_setup(o: Obj) -> bool:
    status = o.get("status") or {}
    return status.get("state") == "Setup" and status.get("status") == "DriverWait" and not status.get("ready")


def assert_setup_driver_is_entry_1(obj: Obj) -> None:
    drivers = obj["status"]["drivers"]
    assert [(d["dwdIndex"], d["watchState"]) for d in drivers] == [(0, "Proposal"), (1, "Setup")]
    assert (drivers[1]["driverID"], drivers[1]["completed"], drivers[1]["status"]) == (
        "tester",
        False,
        "Pending",
    )


def sqlite_path(server: ServerProcess) -> Path:
    return server.state_dir / "slurmlink.db"


def assert_sqlite_intact(server: ServerProcess) -> None:
    """PRAGMA integrity_check on the database as the crash left it (read-only: the WAL stays put)."""
    conn = sqlite3.connect(f"file:{sqlite_path(server)}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def assert_store_consistent(url: str) -> None:
    """The event log is gapless from the compaction point, and every object row is its last event."""
    store = SqlStore(url)
    try:
        compacted, current = store.compacted_revision(), store.current_revision()
        events = store.events_after(compacted, limit=10_000_000)
        assert [e.revision for e in events] == list(range(compacted + 1, current + 1))
        latest: dict[tuple[str, str, str], Any] = {}
        for event in events:
            latest[(event.resource, event.namespace, event.name)] = event
        for (resource, namespace, name), event in latest.items():
            stored = store.get(resource, namespace, name)
            if event.type == "DELETED":
                assert stored is None, (resource, namespace, name)
            else:
                assert stored == event.object, (resource, namespace, name)
    finally:
        store.close()


def store_url_of(server: ServerProcess) -> str:
    return server.store or f"sqlite:///{sqlite_path(server)}"


# ---- one kill while a workflow waits on its Setup driver -----------------------------------------


def test_kill_in_driver_wait_then_restart_continues(store_url: str | None, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "state", store=store_url)
    server.start()
    try:
        with server.client() as client:
            r = client.post(WORKFLOWS, json=workflow("crash", 1001))
            assert r.status_code == 201, r.text
            wait_workflow(client, "crash", ready_in("Proposal"))
            r = client.patch(f"{WORKFLOWS}/crash", json={"spec": {"desiredState": "Setup"}}, headers=MERGE)
            assert r.status_code == 200, r.text
            before = wait_workflow(client, "crash", driver_wait_in_setup)
            computes = client.get(f"{COMPUTES}/crash")
            assert computes.status_code == 200, computes.text
            assert_setup_driver_is_entry_1(before)

            server.kill()
            if store_url is None:
                assert_sqlite_intact(server)
            port = server.port
            server.start()
            assert server.port == port

            after = call(client, "GET", f"{WORKFLOWS}/crash").json()
            assert after == before, "the workflow is exactly as it was when the server died"
            assert call(client, "GET", f"{COMPUTES}/crash").json() == computes.json()

            # The workflow continues: release the Setup driver, then advance through to Teardown.
            r = call(client, "PATCH", f"{WORKFLOWS}/crash", json=RELEASE_SETUP, headers=JSON_PATCH)
            assert r.status_code == 200, r.text
            released = wait_workflow(client, "crash", ready_in("Setup"))
            assert released["status"]["drivers"][1]["completed"] is True
            for state in STATES[2:]:
                r = call(
                    client,
                    "PATCH",
                    f"{WORKFLOWS}/crash",
                    json={"spec": {"desiredState": state}},
                    headers=MERGE,
                )
                assert r.status_code == 200, r.text
                wait_workflow(client, "crash", ready_in(state))
            r = call(client, "DELETE", f"{WORKFLOWS}/crash")
            assert r.status_code in (200, 202), r.text
            wait_gone(client, f"{WORKFLOWS}/crash")
            wait_gone(client, f"{COMPUTES}/crash")
        stopping = time.monotonic()
        server.stop()
        # A clean, prompt exit (uvicorn re-raises SIGTERM after its graceful shutdown), not the
        # SIGKILL that ServerProcess.stop falls back to when shutdown hangs.
        assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM)
        assert time.monotonic() - stopping < 5.0
        assert "Finished server process" in server.log_tail(5)
    finally:
        server.stop()
    if store_url is None:
        assert_sqlite_intact(server)
    assert_store_consistent(store_url_of(server))


# ---- repeated kills while clients keep advancing workflows ---------------------------------------


@dataclass
class Ack:
    """A write the server answered with success."""

    name: str
    what: str  # "create", "annotate", "release", "state"
    value: str = ""
    revision: int = 0


@dataclass
class Acks:
    items: list[Ack] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ack: Ack) -> None:
        with self.lock:
            self.items.append(ack)

    def snapshot(self) -> list[Ack]:
        with self.lock:
            return list(self.items)

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


def drive_workflows(client: httpx.Client, names: list[str], acks: Acks, errors: list[BaseException]) -> None:
    """Take each workflow from creation to Teardown/ready, recording every acknowledged write."""
    step = 0
    try:
        for job_id, name in enumerate(names, start=2000):
            r = call(client, "POST", WORKFLOWS, json=workflow(name, job_id))
            # 409: an earlier attempt committed but its answer was lost in a kill.
            assert r.status_code in (201, 409), r.text
            acks.add(Ack(name, "create", revision=rv(r.json()) if r.status_code == 201 else 0))
            for state in STATES[1:]:
                current = STATES[STATES.index(state) - 1]
                if current == "Setup":
                    wait_workflow(client, name, driver_wait_in_setup)
                    r = call(client, "PATCH", f"{WORKFLOWS}/{name}", json=RELEASE_SETUP, headers=JSON_PATCH)
                    assert r.status_code == 200, r.text
                    acks.add(Ack(name, "release", revision=rv(r.json())))
                wait_workflow(client, name, ready_in(current))
                step += 1
                key = f"test.slurmlink.io/step-{step}"
                patch = {"metadata": {"annotations": {key: str(step)}}}
                r = call(client, "PATCH", f"{WORKFLOWS}/{name}", json=patch, headers=MERGE)
                assert r.status_code == 200, r.text
                acks.add(Ack(name, "annotate", key, rv(r.json())))
                r = call(
                    client,
                    "PATCH",
                    f"{WORKFLOWS}/{name}",
                    json={"spec": {"desiredState": state}},
                    headers=MERGE,
                )
                assert r.status_code == 200, r.text
                acks.add(Ack(name, "state", state, rv(r.json())))
            wait_workflow(client, name, ready_in("Teardown"))
    except BaseException as exc:
        errors.append(exc)


def verify_acks(client: httpx.Client, acked: list[Ack]) -> None:
    """Every acknowledged write is reflected in what the (restarted) server serves."""
    current: dict[str, Obj] = {}
    for name in dict.fromkeys(a.name for a in acked):
        r = call(client, "GET", f"{WORKFLOWS}/{name}")
        assert r.status_code == 200, f"acknowledged workflow {name} is missing: {r.text}"
        current[name] = r.json()
    listed = call(client, "GET", WORKFLOWS).json()
    assert int(listed["metadata"]["resourceVersion"]) >= max((a.revision for a in acked), default=0)
    for ack in acked:
        obj = current[ack.name]
        assert rv(obj) >= ack.revision, f"{ack} rolled back to {rv(obj)}"
        if ack.what == "annotate":
            annotations = obj["metadata"].get("annotations") or {}
            assert ack.value in annotations, f"lost {ack}: {annotations}"
        elif ack.what == "state":
            desired = obj["spec"]["desiredState"]
            assert STATES.index(desired) >= STATES.index(ack.value), f"lost {ack}: at {desired}"
        elif ack.what == "release":
            assert obj["status"]["drivers"][1]["completed"] is True, f"lost {ack}"


def test_repeated_kills_lose_no_acknowledged_write(store_url: str | None, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "state", store=store_url)
    server.start()
    groups = [[f"c{t}-wf{j}" for j in range(2)] for t in range(2)]
    # Per workflow: create, release, and per each of the 6 advances an annotation and a state.
    total = sum(len(g) for g in groups) * (1 + 1 + 6 * 2)
    kills_at = [6, 15, 24, 33, 42]
    acks = Acks()
    errors: list[BaseException] = []
    clients = [server.client() for _ in groups]
    threads = [
        threading.Thread(target=drive_workflows, args=(c, g, acks, errors), daemon=True)
        for c, g in zip(clients, groups, strict=True)
    ]
    try:
        for t in threads:
            t.start()
        for threshold in kills_at:
            deadline = time.monotonic() + 60
            while len(acks) < threshold:
                assert not errors, errors
                assert time.monotonic() < deadline, f"clients stalled at {len(acks)} acknowledged writes"
                time.sleep(0.005)
            acked = acks.snapshot()  # all answered before the kill below
            server.kill()
            if store_url is None:
                assert_sqlite_intact(server)
            server.start()
            with server.client() as checker:
                verify_acks(checker, acked)
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a client never finished"
        assert not errors, errors
        assert len(acks) == total

        with server.client() as checker:
            verify_acks(checker, acks.snapshot())
            for name in (n for g in groups for n in g):
                obj = wait_workflow(checker, name, ready_in("Teardown"))
                steps = {
                    k for k in obj["metadata"].get("annotations", {}) if k.startswith("test.slurmlink.io/")
                }
                assert len(steps) == 6
                r = call(checker, "DELETE", f"{WORKFLOWS}/{name}")
                assert r.status_code in (200, 202), r.text
            for name in (n for g in groups for n in g):
                wait_gone(checker, f"{WORKFLOWS}/{name}")
                wait_gone(checker, f"{COMPUTES}/{name}")
    finally:
        for c in clients:
            c.close()
        server.stop()
    if store_url is None:
        assert_sqlite_intact(server)
    assert_store_consistent(store_url_of(server))
