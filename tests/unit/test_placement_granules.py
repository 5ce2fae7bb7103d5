"""Placement in whole granules: per compute node, across servers, on one server; drained nodes skipped."""

from __future__ import annotations

import pytest

from slurmlink.burstbuffer.placement import (
    ACROSS_SERVERS,
    PER_COMPUTE,
    SINGLE_SERVER,
    Placed,
    PlacementError,
    place,
)
from slurmlink.resources.storage.capacity import NodeCapacity, PoolCapacity

G = 1 << 30


def pool(**free: int) -> PoolCapacity:
    """Nodes with ``free`` granules each (negative: not usable, e.g. drained)."""
    nodes = tuple(
        NodeCapacity(name, "Ready" if f >= 0 else "Disabled", f >= 0, 4, max(f, 0), G)
        for name, f in free.items()
    )
    return PoolCapacity(G, nodes)


def test_per_compute_spreads_over_the_roomiest_nodes() -> None:
    placed = place("xfs", pool(s1=4, s2=2, s3=3), PER_COMPUTE, G, computes=3)
    assert placed == [Placed("s1", G), Placed("s1", G), Placed("s3", G)]  # ties go to the first name


def test_sizes_are_rounded_up_to_granules() -> None:
    (placed,) = place("xfs", pool(s1=4), SINGLE_SERVER, G + 1)
    assert placed == Placed("s1", 2 * G)


def test_across_servers_splits_in_granules_and_never_more_bricks_than_granules() -> None:
    assert place("gluster", pool(s1=4, s2=4, s3=4), ACROSS_SERVERS, 3 * G) == [
        Placed("s1", G),
        Placed("s2", G),
        Placed("s3", G),
    ]
    assert place("gluster", pool(s1=4, s2=4, s3=4), ACROSS_SERVERS, G) == [Placed("s1", G)]
    # 5 granules over 3 nodes: shares of 2; a node with 1 free cannot take one, so two bricks of 3.
    assert place("gluster", pool(s1=4, s2=4, s3=1), ACROSS_SERVERS, 5 * G) == [
        Placed("s1", 3 * G),
        Placed("s2", 3 * G),
    ]


def test_drained_nodes_get_nothing_and_a_full_pool_says_what_it_has() -> None:
    assert {p.node for p in place("xfs", pool(s1=-1, s2=2), PER_COMPUTE, G, computes=2)} == {"s2"}
    with pytest.raises(PlacementError) as info:
        place("xfs", pool(s1=-1, s2=1), PER_COMPUTE, G, computes=2)
    message = str(info.value)
    assert (
        "pool xfs cannot hold 2 x 1GiB now" in message and "s2 1GiB" in message and "s1 Disabled" in message
    )


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(PlacementError, match="does not offer"):
        place("xfs", pool(s1=1), "AllocatePerServer", G)
