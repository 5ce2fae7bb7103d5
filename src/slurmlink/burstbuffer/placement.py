"""Placement: which storage nodes give one allocation set its capacity, counted in whole granules.

A pure function of the pool's nodes and what each has free (``capacity.pool_capacity``), so it can
run inside the store transaction that records the choice (``burstbuffer.placing``): two placements
can never both take the same granules.

* ``AllocatePerCompute``: one allocation per compute node of the job, each of the full capacity;
  each goes to the usable node with the most free granules at that moment (spreading the job's I/O
  over the storage nodes, as NNF gives each compute its own Rabbit).
* ``AllocateAcrossServers``: one file system over several nodes (``gluster``): the capacity is split
  in equal shares (whole granules, at least one each) over as many usable nodes as can hold one, up to
  ``max_servers``.
* ``AllocateSingleServer``: the whole capacity on the usable node with the most free granules.

Drained, Offline and failed nodes are not usable and get nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from slurmlink.resources.sizes import format_size
from slurmlink.resources.storage.capacity import PoolCapacity

PER_COMPUTE = "AllocatePerCompute"
ACROSS_SERVERS = "AllocateAcrossServers"
SINGLE_SERVER = "AllocateSingleServer"


class PlacementError(RuntimeError):
    """The pool cannot hold the request now; the message says what it has and what was asked."""


@dataclass(frozen=True)
class Placed:
    """One allocation: the node and the bytes it takes there (whole granules)."""

    node: str
    capacity: int


def granules(size: int, granularity: int) -> int:
    """Whole granules holding ``size`` bytes (at least one)."""
    return max(1, -(-size // granularity))


def place(
    pool_name: str,
    capacity: PoolCapacity,
    strategy: str,
    size: int,
    *,
    computes: int = 1,
    max_servers: int | None = None,
) -> list[Placed]:
    """Allocations for one allocation set, or PlacementError when the pool cannot hold it now."""
    free = {n.name: n.free_granules for n in capacity.usable_nodes if n.free_granules > 0}
    gran = capacity.granularity
    if strategy == PER_COMPUTE:
        need = granules(size, gran)
        placed = []
        for _ in range(max(1, computes)):
            node = _roomiest(free, need)
            if node is None:
                raise PlacementError(
                    _short(pool_name, capacity, f"{max(1, computes)} x {format_size(need * gran)}")
                )
            free[node] -= need
            placed.append(Placed(node, need * gran))
        return placed
    if strategy == SINGLE_SERVER:
        need = granules(size, gran)
        node = _roomiest(free, need)
        if node is None:
            raise PlacementError(_short(pool_name, capacity, f"{format_size(need * gran)} on one node"))
        return [Placed(node, need * gran)]
    if strategy == ACROSS_SERVERS:
        total = granules(size, gran)
        candidates = sorted(free, key=lambda n: (-free[n], n))
        # Never more bricks than granules: each brick holds at least one.
        limit = (
            min(len(candidates), total) if max_servers is None else min(max_servers, len(candidates), total)
        )
        for count in range(limit, 0, -1):
            share = -(-total // count)
            chosen = [n for n in candidates if free[n] >= share][:count]
            if len(chosen) == count:
                return [Placed(n, share * gran) for n in sorted(chosen)]
        raise PlacementError(_short(pool_name, capacity, format_size(total * gran)))
    raise PlacementError(f"pool {pool_name} does not offer the allocation strategy {strategy}")


def _roomiest(free: dict[str, int], need: int) -> str | None:
    fitting = [n for n, f in free.items() if f >= need]
    return min(fitting, key=lambda n: (-free[n], n)) if fitting else None


def _short(pool_name: str, capacity: PoolCapacity, asked: str) -> str:
    usable = capacity.usable_nodes
    free = sum(n.free_bytes for n in usable)
    others = [f"{n.name} {n.status}" for n in capacity.nodes if not n.usable]
    text = (
        f"pool {pool_name} cannot hold {asked} now: {format_size(free)} free on "
        f"{len(usable)} usable node{'s' if len(usable) != 1 else ''}"
    )
    if usable:
        text += " (" + ", ".join(f"{n.name} {format_size(n.free_bytes)}" for n in usable) + ")"
    if others:
        text += "; not usable: " + ", ".join(others)
    return text
