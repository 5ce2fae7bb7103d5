#!/usr/bin/env python3
"""Benchmark: the CPU one object write costs on PostgreSQL, in the writing process and in the backend.

A private PostgreSQL server (the tests' ``PostgresServer``) with two databases, 200 Workflows of about
2 KB in each, then N compare-and-swap updates through ``SqlStore.update`` on each, side by side:

  * current: the store as it is (write functions of the newest migration, statements run with libpq's
    ``PQexecPrepared`` through psycopg's ``pq`` layer);
  * baseline: the store as it was before (the database taken back to migration objects_0004's write
    functions and row storage, statements run through a psycopg cursor with ``prepare=True``);
  * ``SELECT 1`` through a psycopg cursor: what any round trip costs.

CPU of this process from ``time.thread_time`` and of each connection's backend from ``/proc``. Run by
hand on an otherwise idle machine:  python3 bench/pg_writes.py [--updates 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from procstat import cpu_seconds
from slurmlink import jsonutil
from slurmlink.store.sql import SqlStore
from support.postgres import PostgresServer

STATES = ["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]
OBJECTS = 200


def workflow(name: str, step: int) -> dict[str, Any]:
    """A Workflow as the benchmark's state machine leaves it after Teardown (about 2.4 KB as JSON)."""
    stamp = f"2026-12-06T01:31:29.{step % 1_000_000:06d}Z"
    return {
        "apiVersion": "dataworkflowservices.github.io/v1alpha7",
        "kind": "Workflow",
        "metadata": {
            "name": name,
            "namespace": "slurm",
            "uid": f"37bd01ee-487f-4949-acbd-{name:0>12}"[-36:],
            "creationTimestamp": "2026-12-06T01:31:29Z",
            "generation": 7,
            "finalizers": ["dataworkflowservices.github.io/workflow"],
        },
        "spec": {
            "desiredState": "Teardown",
            "dwDirectives": [f"#DW {state} action=complete" for state in STATES],
            "wlmID": "slurm",
            "jobID": name,
            "userID": 1001,
            "groupID": 1001,
            "hurry": False,
            "forceReady": False,
        },
        "status": {
            "ready": True,
            "state": "Teardown",
            "status": "Completed",
            "message": "",
            "drivers": [
                {
                    "driverID": "tester",
                    "taskID": "",
                    "dwdIndex": index,
                    "watchState": state,
                    "lastHB": 0,
                    "completed": True,
                    "status": "Completed",
                    "completeTime": stamp,
                }
                for index, state in enumerate(STATES)
            ],
            "readyChange": stamp,
            "desiredStateChange": stamp,
            "elapsedTimeLastState": f"{step % 9}.123ms",
        },
    }


def measure(label: str, backend_pid: int, call: Callable[[int], None], *, calls: int) -> tuple[float, float]:
    """Client and backend CPU per call, in µs."""
    backend_before, client_before = cpu_seconds(backend_pid), time.thread_time()
    for step in range(calls):
        call(step)
    client = (time.thread_time() - client_before) / calls * 1e6
    backend = (cpu_seconds(backend_pid) - backend_before) / calls * 1e6
    print(f"{label:44s} client {client:6.1f} µs   backend {backend:6.1f} µs", flush=True)
    return client, backend


class CursorStatement:
    """A hot statement run as the store ran it before: psycopg's cursor, prepared by psycopg."""

    def __init__(self, prepared: Any) -> None:
        self.prepared = prepared

    def run(self, conn: Any, values: dict[str, Any]) -> Any:
        return conn.execute(self.prepared.sql, self.prepared.params(values), prepare=True)


def as_before(store: SqlStore) -> SqlStore:
    """``store`` with the database at objects_0004 and its statements run through psycopg's cursor."""
    from alembic import command

    from slurmlink.store import migrations

    with store.engine.begin() as conn:
        command.downgrade(migrations.config(conn), "objects_0004")
    for prepared in store._sql.values():
        prepared._pq = CursorStatement(prepared)  # type: ignore[assignment]
    return store


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=10_000, help="updates per way (default 10000)")
    args = parser.parse_args()
    if args.updates < 1:
        parser.error("--updates must be positive")
    with PostgresServer() as pg:
        current = SqlStore(pg.create_database("current"))
        before = as_before(SqlStore(pg.create_database("before")))
        try:
            run(current, before, args.updates)
        finally:
            current.close()
            before.close()


def run(current: SqlStore, before: SqlStore, calls: int) -> None:
    import psycopg

    resource, namespace = "dataworkflowservices.github.io/workflows", "slurm"
    names = [f"w{i}" for i in range(OBJECTS)]
    size = len(jsonutil.dumps_str(workflow(names[0], 0)))
    print(f"{OBJECTS} Workflows of {size} bytes; {calls} updates per way\n")
    # Built beforehand: only the write is measured.
    bodies = [workflow(names[step % OBJECTS], step) for step in range(calls)]

    def updates(store: SqlStore) -> tuple[int, Callable[[int], None]]:
        revisions = {}
        for name in names:
            created = store.create(resource, namespace, name, workflow(name, 0))
            revisions[name] = int(created["metadata"]["resourceVersion"])
        with store._driver() as conn:  # the connection the store's next write uses
            pid = int(conn.info.backend_pid)

        def update(step: int) -> None:
            name = names[step % OBJECTS]
            written = store.update(resource, namespace, name, bodies[step], revisions[name])
            revisions[name] = int(written["metadata"]["resourceVersion"])

        return pid, update

    ours = measure("current: SqlStore.update", *updates(current), calls=calls)
    base = measure("baseline: SqlStore.update as before", *updates(before), calls=calls)
    with psycopg.connect(before._autocommit.dsn, autocommit=True) as conn:  # type: ignore[union-attr]
        measure(
            "SELECT 1 through a psycopg cursor",
            int(conn.info.backend_pid),
            lambda _step: conn.execute("SELECT 1", prepare=True).fetchone(),
            calls=calls,
        )
    print(f"\ncurrent / baseline: client {ours[0] / base[0]:.2f}x, backend {ours[1] / base[1]:.2f}x")


if __name__ == "__main__":
    main()
