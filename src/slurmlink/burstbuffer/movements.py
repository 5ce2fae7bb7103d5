"""From a job's copy directives to ``DataMovement`` objects, and from their status to the stage's outcome.

Pure functions: the burst-buffer driver supplies the Workflow, its resolved copies and buffers (the
annotations its Proposal wrote), each buffer's StorageAllocations and the job's compute nodes.

A copy touches one buffer. A shared buffer (``gluster``) is copied through its first allocation's
storage node, once. A per-compute buffer (``xfs``, ``dir``) has one file system per compute node:
a copy in fills every one of them; a copy out empties each into its own subdirectory of the
destination, named after the compute node it was mounted on (allocation *i* is compute node *i*),
so nodes writing the same file names do not overwrite each other.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slurmlink.burstbuffer import directives as bbd
from slurmlink.resources.dws import ownership
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT, endpoint_text


def staging_record(copy: bbd.StagingRequest) -> dict[str, Any]:
    """A resolved copy as the Proposal keeps it on the Workflow (JSON)."""
    return {
        "index": copy.index,
        "command": copy.command,
        "direction": copy.direction,
        "mode": copy.mode,
        "buffer": copy.buffer,
        "source": {"path": copy.source.path, "buffer": copy.source.buffer, "text": copy.source.text},
        "destination": {
            "path": copy.destination.path,
            "buffer": copy.destination.buffer,
            "text": copy.destination.text,
        },
        "directive": copy.directive,
    }


def movement_name(workflow: str, index: int, part: int) -> str:
    """NNF's naming: ``<workflow>-<directive index>-<i>``."""
    return f"{workflow}-{index}-{part}"


def _ref(alloc: Obj) -> dict[str, str]:
    m = alloc["metadata"]
    return {"kind": "StorageAllocation", "name": str(m["name"]), "namespace": str(m.get("namespace") or "")}


def _endpoint(end: Mapping[str, Any], alloc: Obj | None, node_dir: str | None) -> dict[str, Any]:
    path = str(end.get("path") or "")
    if end.get("buffer"):
        assert alloc is not None
        return {"path": path, "allocation": _ref(alloc)}
    if node_dir is not None:
        path = posixpath.join(path, node_dir)
    return {"path": path}


@dataclass(frozen=True)
class Targets:
    """Where one copy runs: (allocation, compute node for a per-node copy out) pairs, or a problem."""

    pairs: tuple[tuple[Obj, str | None], ...] = ()
    problem: str = ""


def targets(
    copy: Mapping[str, Any], buffer: Mapping[str, Any], allocations: Sequence[Obj], computes: Sequence[str]
) -> Targets:
    if not allocations:
        return Targets(problem=f"buffer {buffer.get('name')} has no storage allocated")
    if not buffer.get("perCompute"):
        return Targets(pairs=((allocations[0], None),))
    if copy["direction"] == "in":
        return Targets(pairs=tuple((a, None) for a in allocations))
    if len(computes) < len(allocations):
        used = allocations[: len(computes)] if computes else []
        if not used:
            return Targets(problem="the job's compute nodes are not known (Computes is empty)")
        allocations = used
    return Targets(pairs=tuple((a, computes[i]) for i, a in enumerate(allocations)))


def movement_bodies(
    wf: Obj,
    copies: Iterable[Mapping[str, Any]],
    buffers: Mapping[str, Mapping[str, Any]],
    allocations_of: Callable[[Mapping[str, Any]], Sequence[Obj]],
    computes: Sequence[str],
) -> tuple[list[Obj], str]:
    """The DataMovements of ``copies`` (those of one direction), or ("", problem) if one cannot run."""
    spec = wf.get("spec") or {}
    name, ns = wf["metadata"]["name"], wf["metadata"]["namespace"]
    bodies: list[Obj] = []
    for copy in copies:
        buffer = buffers.get(str(copy["buffer"]))
        if buffer is None:
            return [], f"{copy['directive']}: its buffer {copy['buffer']} is not one of the job's"
        where = targets(copy, buffer, allocations_of(buffer), computes)
        if where.problem:
            return [], where.problem
        outward = copy["direction"] == "out"
        for part, (alloc, compute) in enumerate(where.pairs):
            body: Obj = {
                "apiVersion": DATA_MOVEMENT.api_version(DATA_MOVEMENT.storage_version),
                "kind": DATA_MOVEMENT.kind,
                "metadata": {"name": movement_name(name, int(copy["index"]), part), "namespace": ns},
                "spec": {
                    "source": _endpoint(copy["source"], alloc, None),
                    "destination": _endpoint(copy["destination"], alloc, compute if outward else None),
                    "mode": copy["mode"],
                    "direction": copy["direction"],
                    "node": alloc["spec"]["node"],
                    "userID": int(spec.get("userID") or 0),
                    "groupID": int(spec.get("groupID") or 0),
                    # A job's own buffer is new and unread until the job starts: no rename per file.
                    "inPlace": copy["direction"] == "in" and buffer.get("command") == "jobdw",
                    "directive": str(copy["directive"]),
                    "directiveIndex": int(copy["index"]),
                },
            }
            ownership.adopt(body, {**wf, "kind": "Workflow"})
            bodies.append(body)
    return bodies, ""


@dataclass(frozen=True)
class StageOutcome:
    done: bool = False
    waiting: str = ""
    error: str = ""


def stage_outcome(wanted: Sequence[str], movements: Mapping[str, Obj]) -> StageOutcome:
    """All of ``wanted`` (names) finished with Success: done; one failed or cancelled: its message."""
    waiting = []
    for name in wanted:
        obj = movements.get(name)
        status = (obj or {}).get("status") or {}
        if obj is None or status.get("state") != "Finished":
            waiting.append(_progress_text(name, obj))
            continue
        if status.get("status") != "Success":
            spec = obj.get("spec") or {}
            what = (
                f"{endpoint_text(spec.get('source'))} -> {endpoint_text(spec.get('destination'))} "
                f"on {spec.get('node')}"
            )
            reason = status.get("message") or str(status.get("status") or "failed").lower()
            return StageOutcome(error=f"{spec.get('directive') or name} ({what}): {reason}")
    if waiting:
        return StageOutcome(waiting="copying: " + "; ".join(waiting))
    return StageOutcome(done=True)


def _progress_text(name: str, obj: Obj | None) -> str:
    status = (obj or {}).get("status") or {}
    state = status.get("state") or "Pending"
    done, total = status.get("bytesDone"), status.get("bytesTotal")
    if isinstance(done, int) and isinstance(total, int) and total:
        return f"{name} {state} {done * 100 // total}%"
    return f"{name} {state}"
