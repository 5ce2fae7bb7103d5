"""A local multi-node Slurm ("dev cluster") on one host, for tests and the quick start.

Runs Debian's Slurm 22.05 daemons as root with every file inside one state directory: its own config, munge
key and socket, state, spool, logs and pid files. munged and ``slurmctld -D`` run on the host; each compute
node (``compute1``...) is a set of namespaces (network, UTS, mount) with its own address and hostname, and
runs ``slurmd -D -N <node>`` inside them; storage nodes (``storage1``...) are the same without slurmd, for
storage agents and file system servers. So ``srun -N2``, per-node placement, per-node mounts and node
failures are real. The system's ``/etc/slurm`` and munge are never touched, so a dev cluster can live next
to a real installation as long as the ports differ. Jobs that use burst buffers must be submitted by an
unprivileged user (the lua plugin refuses root), hence :meth:`DevCluster.ensure_job_user` and
:meth:`DevCluster.run_as_job_user`.

Running something on a node: ``cluster.node("storage1")`` (a :class:`Node`), then :func:`node_command`
(the nsenter argv), :func:`run_in_node`, :func:`popen_in_node` or :func:`spawn_in_node`.

With ``accounting=True`` it also runs Slurm's accounting storage: slurmdbd on a private MariaDB (its own
data dir and socket under the state dir), so ``sacct`` and ``sacctmgr`` work with the cluster's SLURM_CONF;
the job user's jobs are charged to the account :data:`DEFAULT_ACCOUNT` unless they name another.

With ``memory_limits=True`` Slurm allocates memory to jobs (``--mem``, else 256 MiB per CPU) and enforces it
with cgroup v1's memory controller (``task/cgroup``, ``cgroup.conf``): a job over its memory ends
OUT_OF_MEMORY.

One module per job: ``layout`` (paths, nodes and addresses, defaults), ``nodes`` (namespaces, bridge and
veths; running programs inside a node), ``host`` (packages, job user, the memory cgroup check),
``partitions`` (``--partition`` specs and their slurm.conf lines), ``config`` (slurm.conf and cgroup.conf
rendering),
``daemons`` (what runs and how it is recognised), ``mariadb`` (the accounting database's server),
``slurmdbd`` (slurmdbd.conf, slurm.conf's accounting lines, the records it starts with), ``cluster``
(up/down/status), ``jobs`` (Slurm clients and job helpers for tests). Processes are supervised with
:mod:`slurmlink.supervise`.
"""

from slurmlink.slurm.devcluster.cluster import DevCluster, DevClusterStatus, GatewaySetup, NodeStatus
from slurmlink.slurm.devcluster.config import BurstBufferSetup, placeholder_burst_buffer
from slurmlink.slurm.devcluster.daemons import free_port_pair, gateway_healthy, unix_http_get
from slurmlink.slurm.devcluster.errors import DevClusterError
from slurmlink.slurm.devcluster.host import ACCOUNTING_PACKAGES, PACKAGES
from slurmlink.slurm.devcluster.jobs import parse_scontrol_record
from slurmlink.slurm.devcluster.layout import (
    COMPUTE,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_COMPUTE_NODES,
    DEFAULT_CTLD_PORT,
    DEFAULT_DBD_PORT,
    DEFAULT_JOB_UID,
    DEFAULT_JOB_USER,
    DEFAULT_SLURMD_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_STORAGE_NODES,
    MAX_COMPUTE_NODES,
    MAX_STORAGE_NODES,
    PARTITION,
    STORAGE,
    Network,
    Node,
    NodeRole,
)
from slurmlink.slurm.devcluster.mariadb import MariaDB
from slurmlink.slurm.devcluster.nodes import (
    node_command,
    node_exists,
    node_pids,
    popen_in_node,
    run_in_node,
    spawn_in_node,
)
from slurmlink.slurm.devcluster.partitions import PartitionSpec, PartitionSpecError
from slurmlink.slurm.devcluster.slurmdbd import DEFAULT_ACCOUNT, ENFORCE_FLAGS
from slurmlink.supervise import running_pid, spawn_detached, stop_pid

__all__ = [
    "ACCOUNTING_PACKAGES",
    "COMPUTE",
    "DEFAULT_ACCOUNT",
    "DEFAULT_CLUSTER_NAME",
    "DEFAULT_COMPUTE_NODES",
    "DEFAULT_CTLD_PORT",
    "DEFAULT_DBD_PORT",
    "DEFAULT_JOB_UID",
    "DEFAULT_JOB_USER",
    "DEFAULT_SLURMD_PORT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STORAGE_NODES",
    "ENFORCE_FLAGS",
    "MAX_COMPUTE_NODES",
    "MAX_STORAGE_NODES",
    "PACKAGES",
    "PARTITION",
    "STORAGE",
    "BurstBufferSetup",
    "DevCluster",
    "DevClusterError",
    "DevClusterStatus",
    "GatewaySetup",
    "MariaDB",
    "Network",
    "Node",
    "NodeRole",
    "NodeStatus",
    "PartitionSpec",
    "PartitionSpecError",
    "free_port_pair",
    "gateway_healthy",
    "node_command",
    "node_exists",
    "node_pids",
    "parse_scontrol_record",
    "placeholder_burst_buffer",
    "popen_in_node",
    "run_in_node",
    "running_pid",
    "spawn_detached",
    "spawn_in_node",
    "stop_pid",
    "unix_http_get",
]
