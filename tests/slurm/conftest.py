"""Fixtures for tests against a real single-node Slurm (see ``slurmlink.slurm.devcluster``).

``dev_cluster`` (session scope) is meant to be shared by every test under tests/slurm: it brings one
cluster up in a temporary, world-searchable state dir on free ports, with a do-nothing burst_buffer/lua
plugin, and tears it down (purging the dir) at the end. Set ``SLURMLINK_KEEP_DEV_CLUSTER=1`` to keep the
state dir (logs!) for a post-mortem.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from slurmlink.slurm.devcluster import BurstBufferSetup, DevCluster
from support.devcluster import new_cluster, skip_unless_possible, teardown_cluster

# A burst_buffer/lua plugin that does nothing: every callback of the 22.05 API (plus the 24.05 test_data_*
# ones, which 22.05 never calls) just succeeds. One pool lets jobs ask for "capacity=N pool=testpool", which
# makes them start right after stage-in instead of waiting for the next scheduler pass.
NOOP_BB_LUA = """\
function slurm_bb_job_process(job_script) return slurm.SUCCESS end
function slurm_bb_pools()
    return slurm.SUCCESS, '{"pools":[{"id":"testpool","quantity":1000,"granularity":1}]}'
end
function slurm_bb_job_teardown(job_id, job_script, hurry) return slurm.SUCCESS end
function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script) return slurm.SUCCESS end
function slurm_bb_data_in(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_test_data_in(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_real_size(job_id) return slurm.SUCCESS end
function slurm_bb_paths(job_id, job_script, path_file) return slurm.SUCCESS end
function slurm_bb_pre_run(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_post_run(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_data_out(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_test_data_out(job_id, job_script) return slurm.SUCCESS end
function slurm_bb_get_status(...) return slurm.SUCCESS, "noop" end
"""

NOOP_BB_CONF = """\
Directive=DW
StageInTimeout=30
StageOutTimeout=30
OtherTimeout=30
Flags=TeardownFailure
"""

NOOP_BURST_BUFFER = BurstBufferSetup(lua_source=NOOP_BB_LUA, conf_text=NOOP_BB_CONF)


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
