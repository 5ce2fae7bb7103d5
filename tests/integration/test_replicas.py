"""Two ``slurmlink serve`` replicas on one PostgreSQL database.

Each replica has its own state directory (its own CA and admin kubeconfig), so each test talks to a
replica with that replica's own admin client. Writes go through one replica's HTTP API; watches are
HTTP ``?watch=1&resourceVersion=...`` streams on the other. Waits poll with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.server import ServerProcess
from support.workflows import GROUP_VERSION, workflow

pytestmark = pytest.mark.postgres

WORKFLOWS = f"/apis/{GROUP_VERSION}/namespaces/slurm/workflows"
MERGE = {"content-type": "application/merge-patch+json"}
JSON_PATCH = {"content-type": "application/json-patch+json"}
#: The seed's JSON patch that releases the ``#DW Setup action=wait`` driver (entry 1).
RELEASE_SETUP = [
    {"op": "replace", "path": "/status/drivers/1/status", "value": "Completed"},
    {"op": "replace", "path": "/status/drivers/1/completed", "value": True},
]
STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
#: Every write must reach the other replica's watch well before its 1 s safety-net poll would.
MAX_DELIVERY = 1.0

Frame = dict[str, Any]


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class WatchStream:
    """An HTTP watch in a background thread; frames are queued with their arrival time."""

    def __init__(self, server: ServerProcess, path: str, resource_version: str) -> None:
        self.server = server
        self.path = path
        self.params = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": "120"}
        self.opened = threading.Event()
        self.frames: queue.Queue[tuple[float, Frame] | None] = queue.Queue()
        self.seen: list[Frame] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self._network_stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout: float = 10.0) -> WatchStream:
        self._thread.start()
        assert self.opened.wait(timeout), f"watch on {self.server.url} did not open: {self.error}"
        assert self.status == 200, (self.status, repr(self.error))
        return self

    def _run(self) -> None:
        try:
            with (
                self.server.client() as client,
                client.stream(
                    "GET", self.path, params=self.params, timeout=httpx.Timeout(10.0, read=150.0)
                ) as response,
            ):
                # The server subscribes before it sends the headers: from here on nothing is missed.
                self.status = response.status_code
                self._network_stream = response.extensions.get("network_stream")
                self.opened.set()
                for line in response.iter_lines():
                    if line.strip():
                        self.frames.put((time.monotonic(), json.loads(line)))
        except BaseException as exc:  # the server went away at the end of the test
            self.error = exc
        finally:
            self.opened.set()
            self.frames.put(None)

    def __enter__(self) -> WatchStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the watch from the client side (shut the socket down under the reading thread)."""
        stream = self._network_stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 10.0) -> tuple[float, Frame]:
        """The first frame (after those already consumed) that matches, and when it arrived."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching watch frame in {timeout}s; saw {self._summary()}")
            try:
                item = self.frames.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(f"watch ended ({self.error!r}); saw {self._summary()}")
            arrived, frame = item
            self.seen.append(frame)
            assert frame["type"] != "ERROR", frame
            if predicate(frame):
                return arrived, frame

    def _summary(self) -> list[tuple[str, str | None]]:
        return [(f["type"], f["object"].get("metadata", {}).get("resourceVersion")) for f in self.seen]


def event_for(
    name: str, event_type: str, check: Callable[[Frame], bool] = lambda _o: True
) -> Callable[[Frame], bool]:
    def predicate(frame: Frame) -> bool:
        obj = frame["object"]
        return frame["type"] == event_type and obj["metadata"]["name"] == name and check(obj)

    return predicate


def problems_in_log(server: ServerProcess) -> list[str]:
    """Error-level records and tracebacks in a server's log."""
    bad = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if "Traceback" in line:
            bad.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical", "exception"):
            bad.append(line)
    return bad


@pytest.fixture
def replicas(
    postgres_dsn: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[ServerProcess]]:
    """Two replicas on one database; ``request.param`` holds each one's extra flags."""
    flags: tuple[tuple[str, ...], tuple[str, ...]] = getattr(request, "param", ((), ()))
    servers = [
        ServerProcess(tmp_path / f"replica{i}", store=postgres_dsn, extra_args=flags[i]) for i in range(2)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def wait_object(
    client: httpx.Client, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        r = client.get(f"{WORKFLOWS}/{name}")
        if r.status_code == 200:
            last = r.json()
            if check(last):
                return dict(last)
        time.sleep(0.02)
    raise AssertionError(f"workflow {name} never matched; last seen: {json.dumps(last)[:2000]}")


def check_replication(
    c1: httpx.Client, c2: httpx.Client, on_one: WatchStream, on_two: WatchStream
) -> list[float]:
    """Writes through replica one show up on replica two's watch (and back); returns latencies."""
    sent = time.monotonic()
    r = c1.post(WORKFLOWS, json=workflow("across", ["#DW Proposal action=complete"]))
    assert r.status_code == 201, r.text
    created = r.json()
    arrived, frame = on_two.wait_for(event_for("across", "ADDED"))
    latencies = [arrived - sent]
    assert frame["object"]["metadata"]["uid"] == created["metadata"]["uid"]
    assert rv(frame["object"]) == rv(created)

    # Replica one's controllers take the workflow to Proposal/ready; replica two sees each step.
    _, ready = on_two.wait_for(
        event_for("across", "MODIFIED", lambda o: o.get("status", {}).get("ready") is True)
    )
    assert ready["object"]["status"]["state"] == "Proposal"
    assert ready["object"]["metadata"]["finalizers"] == ["dataworkflowservices.github.io/workflow"]

    for i in range(5):
        sent = time.monotonic()
        r = c1.patch(f"{WORKFLOWS}/across", json={"metadata": {"labels": {"step": str(i)}}}, headers=MERGE)
        assert r.status_code == 200, r.text
        patched = r.json()
        arrived, frame = on_two.wait_for(event_for("across", "MODIFIED", revision_is(rv(patched))))
        latencies.append(arrived - sent)
        assert frame["object"]["metadata"]["labels"] == {"step": str(i)}
        assert frame["object"] == patched

    # And the other way round: a write through the API-only replica reaches replica one's watch.
    sent = time.monotonic()
    r = c2.patch(f"{WORKFLOWS}/across", json={"metadata": {"labels": {"via": "two"}}}, headers=MERGE)
    assert r.status_code == 200, r.text
    last = rv(r.json())
    arrived, frame = on_one.wait_for(event_for("across", "MODIFIED", revision_is(last)))
    latencies.append(arrived - sent)
    assert frame["object"]["metadata"]["labels"] == {"step": "4", "via": "two"}

    # Both replicas read the same object; both watches delivered the same sequence of revisions.
    assert c1.get(f"{WORKFLOWS}/across").json() == c2.get(f"{WORKFLOWS}/across").json()
    on_two.wait_for(event_for("across", "MODIFIED", revision_is(last)))
    assert [rv(f["object"]) for f in on_two.seen] == [rv(f["object"]) for f in on_one.seen]
    return latencies


def revision_is(revision: int) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: rv(obj) == revision


@pytest.mark.parametrize("replicas", [((), ("--no-controllers",))], indirect=True, ids=["api-only-second"])
def test_watch_on_one_replica_sees_writes_through_the_other(replicas: list[ServerProcess]) -> None:
    one, two = replicas
    with one.client() as c1, two.client() as c2:
        start_rv = c1.get(WORKFLOWS).json()["metadata"]["resourceVersion"]
        with WatchStream(two, WORKFLOWS, start_rv) as on_two, WatchStream(one, WORKFLOWS, start_rv) as on_one:
            latencies = check_replication(c1, c2, on_one, on_two)
    # Typically 5-20 ms. The servers' safety-net poll runs every second, so a median over a
    # quarter of a second would mean the LISTEN/NOTIFY wake-up is not what delivers.
    assert max(latencies) < MAX_DELIVERY, latencies
    assert sorted(latencies)[len(latencies) // 2] < 0.25, latencies
    assert problems_in_log(one) == [] and problems_in_log(two) == []


def run_shared_workflow(c1: httpx.Client, c2: httpx.Client, watches: list[WatchStream]) -> None:
    """Create through one replica, advance alternately through both, delete, compare both watches."""
    clients = [c1, c2]
    r = c1.post(WORKFLOWS, json=workflow("shared", ["#DW Proposal action=complete", "#DW Setup action=wait"]))
    assert r.status_code == 201, r.text

    def at(state: str) -> Callable[[dict[str, Any]], bool]:
        return lambda o: o.get("status", {}).get("state") == state and o["status"].get("ready") is True

    wait_object(c2, "shared", at("Proposal"))
    for i, state in enumerate(STATES[1:], start=1):
        writer, reader = clients[i % 2], clients[(i + 1) % 2]
        r = writer.patch(f"{WORKFLOWS}/shared", json={"spec": {"desiredState": state}}, headers=MERGE)
        assert r.status_code == 200, r.text
        if state == "Setup":
            waiting = wait_object(
                reader,
                "shared",
                lambda o: (
                    o.get("status", {}).get("state") == "Setup" and o["status"].get("status") == "DriverWait"
                ),
            )
            driver = waiting["status"]["drivers"][1]
            assert (driver["watchState"], driver["dwdIndex"], driver["completed"]) == ("Setup", 1, False)
            r = reader.patch(f"{WORKFLOWS}/shared", json=RELEASE_SETUP, headers=JSON_PATCH)
            assert r.status_code == 200, r.text
        wait_object(reader, "shared", at(state))

    r = c2.delete(f"{WORKFLOWS}/shared")
    assert r.status_code in (200, 202), r.text
    for client in clients:
        deadline = time.monotonic() + 15
        while client.get(f"{WORKFLOWS}/shared").status_code != 404:
            assert time.monotonic() < deadline, "workflow was never finalized and removed"
            time.sleep(0.02)

    # Both replicas' watches delivered the same history, ending in the deletion.
    for watch in watches:
        watch.wait_for(event_for("shared", "DELETED"))
    histories = [[(f["type"], rv(f["object"])) for f in w.seen] for w in watches]
    assert histories[0] == histories[1]
    revisions = [r for _, r in histories[0]]
    assert revisions == sorted(set(revisions)), "strictly increasing, no duplicates"
    states_seen = [f["object"].get("status", {}).get("state") for f in watches[0].seen]
    assert [s for s in dict.fromkeys(states_seen) if s] == STATES


def test_two_replicas_with_controllers_run_a_workflow_to_completion(replicas: list[ServerProcess]) -> None:
    """Both replicas run the workflow controller and the test driver on one database."""
    one, two = replicas
    with one.client() as c1, two.client() as c2:
        start_rv = c2.get(WORKFLOWS).json()["metadata"]["resourceVersion"]
        with WatchStream(one, WORKFLOWS, start_rv) as w1, WatchStream(two, WORKFLOWS, start_rv) as w2:
            run_shared_workflow(c1, c2, [w1, w2])
    assert problems_in_log(one) == [] and problems_in_log(two) == []
