"""A local single-node Slurm ("dev cluster") for tests and the quick start.

Runs Debian's Slurm 22.05 daemons (munged, ``slurmctld -D``, ``slurmd -D -N localhost``) as root with every
file inside one state directory: its own config, munge key and socket, state, spool, logs and pid files. The
system's ``/etc/slurm`` and munge are never touched, so a dev cluster can live next to a real installation as
long as the ports differ. Jobs that use burst buffers must be submitted by an unprivileged user (the lua
plugin refuses root), hence :meth:`DevCluster.ensure_job_user` and :meth:`DevCluster.run_as_job_user`.

One module per job: ``layout`` (paths and defaults), ``host`` (packages, job user), ``config`` (slurm.conf
rendering), ``daemons`` (what runs and how it is recognised), ``cluster`` (up/down/status), ``jobs``
(Slurm clients and job helpers for tests). Processes are supervised with :mod:`slurmlink.supervise`.
"""

from slurmlink.slurm.devcluster.cluster import DevCluster, DevClusterStatus, GatewaySetup
from slurmlink.slurm.devcluster.config import BurstBufferSetup, placeholder_burst_buffer
from slurmlink.slurm.devcluster.daemons import free_port_pair, gateway_healthy, unix_http_get
from slurmlink.slurm.devcluster.errors import DevClusterError
from slurmlink.slurm.devcluster.host import PACKAGES
from slurmlink.slurm.devcluster.jobs import parse_scontrol_record
from slurmlink.slurm.devcluster.layout import (
    DEFAULT_CLUSTER_NAME,
    DEFAULT_CTLD_PORT,
    DEFAULT_JOB_UID,
    DEFAULT_JOB_USER,
    DEFAULT_SLURMD_PORT,
    DEFAULT_STATE_DIR,
    NODE_NAME,
    PARTITION,
)
from slurmlink.supervise import running_pid, spawn_detached, stop_pid

__all__ = [
    "DEFAULT_CLUSTER_NAME",
    "DEFAULT_CTLD_PORT",
    "DEFAULT_JOB_UID",
    "DEFAULT_JOB_USER",
    "DEFAULT_SLURMD_PORT",
    "DEFAULT_STATE_DIR",
    "NODE_NAME",
    "PACKAGES",
    "PARTITION",
    "BurstBufferSetup",
    "DevCluster",
    "DevClusterError",
    "DevClusterStatus",
    "GatewaySetup",
    "free_port_pair",
    "gateway_healthy",
    "parse_scontrol_record",
    "placeholder_burst_buffer",
    "running_pid",
    "spawn_detached",
    "stop_pid",
    "unix_http_get",
]
