"""Fixtures for tests against a real single-node Slurm (see ``slurmlink.slurm.devcluster``).

``dev_cluster`` (session scope) is meant to be shared by every test under tests/slurm: it brings one
cluster up in a temporary, world-searchable state dir on free ports, with a do-nothing burst_buffer/lua
plugin, and tears it down (purging the dir) at the end. Set ``SLURMLINK_KEEP_DEV_CLUSTER=1`` to keep the
state dir (logs!) for a post-mortem.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from slurmlink.slurm.devcluster import BurstBufferSetup, DevCluster, placeholder_burst_buffer
from support.devcluster import new_cluster, skip_unless_possible, teardown_cluster
from support.quickstart import QuickStart, burst_buffer_quickstart

# A burst_buffer/lua plugin that does nothing. Its one pool lets jobs ask for "capacity=N pool=testpool",
# which makes them start right after stage-in instead of waiting for the next scheduler pass.
NOOP_BURST_BUFFER = placeholder_burst_buffer(pool_capacity=1000)


@pytest.fixture(scope="session")
def noop_burst_buffer() -> BurstBufferSetup:
    """The do-nothing burst buffer plugin the shared cluster starts with."""
    return NOOP_BURST_BUFFER


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[DevCluster]:
    """One running single-node Slurm for the whole session (burst_buffer/lua with the no-op plugin).

    Tests that reconfigure it (``dev_cluster.up(burst_buffer=...)``) should restore the no-op plugin.
    """
    skip_unless_possible()
    cluster = new_cluster("slurmlink-devcluster-")
    try:
        cluster.up(burst_buffer=NOOP_BURST_BUFFER, wait_timeout=120)
        yield cluster
    finally:
        teardown_cluster(cluster)


@pytest.fixture()
def scratch_cluster() -> Iterator[DevCluster]:
    """A second, not yet started cluster of its own, for tests that stop or break it."""
    skip_unless_possible()
    cluster = new_cluster("slurmlink-devcluster-scratch-")
    try:
        yield cluster
    finally:
        teardown_cluster(cluster)


@pytest.fixture(scope="session")
def bb_quickstart() -> Iterator[QuickStart]:
    """The multi-node quick start (2 compute, 3 storage nodes, real burst buffers) the burst-buffer
    modules share; up once Slurm knows the pools, taken down (purged) at the end of the session."""
    with burst_buffer_quickstart("slurmlink-bb-") as quick:
        yield quick
