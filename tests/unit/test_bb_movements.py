"""Copies to DataMovements and back (slurmlink.burstbuffer.movements): where each copy runs, and what the
stage's outcome is."""

from __future__ import annotations

from typing import Any

from slurmlink.burstbuffer.movements import movement_bodies, stage_outcome, targets

WF: dict[str, Any] = {
    "metadata": {"name": "bb7", "namespace": "slurm", "uid": "u-1"},
    "spec": {"userID": 1001, "groupID": 1002},
}


def _alloc(index: int, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"bb7-0-{index}", "namespace": "slurm"},
        "spec": {"node": node, "index": index},
    }


ALLOCS = [_alloc(0, "s1"), _alloc(1, "s2"), _alloc(2, "s3")]


def _copy(direction: str) -> dict[str, Any]:
    inside = {"path": "data", "buffer": "job/b", "text": "$DW_JOB_b/data"}
    outside = {"path": "/lus/data", "buffer": None, "text": "/lus/data"}
    return {
        "index": 1,
        "command": "copy_in" if direction == "in" else "copy_out",
        "direction": direction,
        "mode": "auto",
        "buffer": "job/b",
        "source": outside if direction == "in" else inside,
        "destination": inside if direction == "in" else outside,
        "directive": "#DW copy_x",
    }


def test_shared_buffers_copy_once_per_node_buffers_once_per_allocation() -> None:
    shared = targets(_copy("in"), {"name": "b", "perCompute": False}, ALLOCS, ["c1", "c2", "c3"])
    assert [(a["spec"]["node"], c) for a, c in shared.pairs] == [("s1", None)]
    per_in = targets(_copy("in"), {"name": "b", "perCompute": True}, ALLOCS, [])
    assert [a["spec"]["node"] for a, _ in per_in.pairs] == ["s1", "s2", "s3"]
    per_out = targets(_copy("out"), {"name": "b", "perCompute": True}, ALLOCS, ["c1", "c2"])
    assert [(a["spec"]["node"], c) for a, c in per_out.pairs] == [("s1", "c1"), ("s2", "c2")]
    assert "not known" in targets(_copy("out"), {"name": "b", "perCompute": True}, ALLOCS, []).problem
    assert "no storage allocated" in targets(_copy("in"), {"name": "b"}, [], ["c1"]).problem


def test_bodies_carry_the_user_the_node_and_per_node_destinations() -> None:
    buffers = {"job/b": {"name": "b", "key": "job/b", "perCompute": True}}
    bodies, problem = movement_bodies(WF, [_copy("out")], buffers, lambda _b: ALLOCS[:2], ["c1", "c2"])
    assert problem == ""
    assert [b["metadata"]["name"] for b in bodies] == ["bb7-1-0", "bb7-1-1"]
    first = bodies[0]["spec"]
    assert first["source"] == {
        "path": "data",
        "allocation": {"kind": "StorageAllocation", "name": "bb7-0-0", "namespace": "slurm"},
    }
    assert first["destination"] == {"path": "/lus/data/c1"}
    assert (first["node"], first["userID"], first["groupID"]) == ("s1", 1001, 1002)
    assert bodies[0]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    missing, problem = movement_bodies(WF, [{**_copy("in"), "buffer": "job/x"}], buffers, lambda _b: [], [])
    assert missing == [] and "job/x" in problem


def test_only_copies_into_a_jobs_own_buffer_write_in_place() -> None:
    """A job buffer is new and unread until the job starts; a persistent one may be read meanwhile,
    and a copy out writes where others may read."""

    def in_place(direction: str, command: str) -> list[bool]:
        buffers = {"job/b": {"name": "b", "key": "job/b", "perCompute": True, "command": command}}
        bodies, problem = movement_bodies(
            WF, [_copy(direction)], buffers, lambda _b: ALLOCS[:2], ["c1", "c2"]
        )
        assert problem == ""
        return [body["spec"]["inPlace"] for body in bodies]

    assert in_place("in", "jobdw") == [True, True]
    assert in_place("out", "jobdw") == [False, False]
    assert in_place("in", "persistentdw") == [False, False]
    assert in_place("in", "create_persistent") == [False, False]


def _movement(state: str, status: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"state": state, **extra}
    if status:
        body["status"] = status
    spec = {
        "directive": "#DW copy_in a",
        "source": {"path": "/a"},
        "destination": {"path": "x"},
        "node": "s1",
    }
    return {"spec": spec, "status": body}


def test_stage_outcome() -> None:
    assert stage_outcome(["m1"], {"m1": _movement("Finished", "Success")}).done
    waiting = stage_outcome(["m1", "m2"], {"m1": _movement("Running", bytesDone=1, bytesTotal=4)})
    assert not waiting.done and waiting.waiting == "copying: m1 Running 25%; m2 Pending"
    failed = stage_outcome(["m1"], {"m1": _movement("Finished", "Failed", message="/a: Permission denied")})
    assert failed.error == "#DW copy_in a (/a -> x on s1): /a: Permission denied"
    assert stage_outcome(["m1"], {"m1": _movement("Finished", "Cancelled")}).error.endswith(": cancelled")
