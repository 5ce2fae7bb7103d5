"""Where a dev cluster keeps everything: one state directory, its nodes, and the defaults it starts from.

Every node of the cluster (``compute1``..., ``storage1``...) is a set of persistent namespaces (network, UTS,
mount) pinned to files under ``state_dir/ns/<node>/``, with its own address on the cluster's private /24
(:class:`Network`). This module only names and numbers them; :mod:`.nodes` creates them and runs programs
inside them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slurmlink.slurm.devcluster.errors import DevClusterError

#: Under /var/tmp, not the invoking user's home: the unprivileged job user must reach slurm.conf, the
#: munge socket and the spool directory, and root's home is private.
DEFAULT_STATE_DIR = Path("/var/tmp/slurmlink/dev-cluster")
DEFAULT_CTLD_PORT = 6917
DEFAULT_SLURMD_PORT = 6918
#: slurmdbd's port (with accounting); its MariaDB listens on a Unix socket only.
DEFAULT_DBD_PORT = 6919
DEFAULT_JOB_USER = "slurmlink-job"
DEFAULT_JOB_UID = 23001
DEFAULT_CLUSTER_NAME = "slurmlink-dev"
#: Slurm keeps ClusterName in lower case; slurmdbd names tables after it, hence the short plain form.
_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")

PARTITION = "debug"
DEFAULT_COMPUTE_NODES = 1
DEFAULT_STORAGE_NODES = 1
MAX_COMPUTE_NODES = 99
MAX_STORAGE_NODES = 50
#: slurmctld's name in ``SlurmctldHost``: it accepts "localhost" as its own name on any host.
CONTROLLER_NAME = "localhost"
#: The /24s of dev clusters are taken from this range, one per cluster, avoiding any network in use
#: (this environment variable names another range, for hosts that route 10.213/16).
SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
SUBNET_POOL_ENV = "SLURMLINK_DEV_CLUSTER_SUBNETS"
NETWORK_FILE = "network.json"
NS_DIR_NAME = "ns"

NodeRole = Literal["compute", "storage"]
COMPUTE: NodeRole = "compute"
STORAGE: NodeRole = "storage"
#: Host part of a node's address: compute node i is .(100+i), storage node j is .(200+j).
_ADDRESS_BASE = {COMPUTE: 100, STORAGE: 200}
#: A node's namespaces, as files under its directory: what nsenter's --net/--uts/--mount take.
NS_KINDS = ("net", "uts", "mnt")


def check_cluster_name(name: str) -> str:
    """The name in lower case, as Slurm keeps it; an error if slurm.conf or slurmdbd would not take it."""
    lowered = name.strip().lower()
    if not _CLUSTER_NAME.match(lowered):
        raise DevClusterError(
            f"cluster name {name!r} must be 1-40 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return lowered


def node_name(role: NodeRole, index: int) -> str:
    """``compute1``, ``storage3``: the node's Slurm name and its hostname (indexes start at 1)."""
    return f"{role}{index}"


@dataclass(frozen=True)
class Network:
    """A cluster's private network: a /24, a bridge in the host namespace, one veth pair per node.

    ``cluster_id`` (hex) names the host-side interfaces (``sl<id>br``, ``sl<id>c1``, ``sl<id>s1``), which
    must be unique on the host and fit the kernel's 15 characters.
    """

    cluster_id: str
    subnet: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        return f"sl{self.cluster_id}br"

    @property
    def controller_address(self) -> str:
        """The bridge's address: where nodes reach slurmctld, munge-free services and ``slurmlink serve``."""
        return str(self.subnet.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def address(self, role: NodeRole, index: int) -> str:
        return str(self.subnet.network_address + _ADDRESS_BASE[role] + index)

    def host_veth(self, role: NodeRole, index: int) -> str:
        return f"sl{self.cluster_id}{role[0]}{index}"

    def to_json(self) -> dict[str, str]:
        return {"cluster_id": self.cluster_id, "subnet": str(self.subnet)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Network:
        return cls(cluster_id=str(data["cluster_id"]), subnet=ipaddress.IPv4Network(data["subnet"]))


@dataclass(frozen=True)
class Node:
    """One node of a dev cluster: its name (= hostname = Slurm NodeName), role, address and namespaces.

    Run programs inside it with :func:`slurmlink.slurm.devcluster.nodes.node_command` (or ``run_in_node``,
    ``spawn_in_node``); ``slurmlink dev-cluster exec NODE -- CMD`` does the same for humans.
    """

    name: str
    role: NodeRole
    index: int
    address: str
    #: Holds the pin files ``net``, ``uts`` and ``mnt`` (bind mounts of the namespaces while it exists).
    ns_dir: Path
    #: The host end of its veth pair (the node's end is ``eth0``).
    host_veth: str

    @property
    def net_ns(self) -> Path:
        return self.ns_dir / "net"

    @property
    def uts_ns(self) -> Path:
        return self.ns_dir / "uts"

    @property
    def mnt_ns(self) -> Path:
        return self.ns_dir / "mnt"

    @property
    def is_compute(self) -> bool:
        return self.role == COMPUTE

    def to_json(self) -> dict[str, str | int]:
        return {
            "name": self.name,
            "role": self.role,
            "address": self.address,
            "net_ns": str(self.net_ns),
            "uts_ns": str(self.uts_ns),
            "mnt_ns": str(self.mnt_ns),
        }


SETTINGS_FILE = "devcluster.json"
KUBECONFIG_REF_FILE = "kubeconfig.path"
#: What the running gateway was started with (argv, kubeconfig hash), to restart it when that changes.
GATEWAY_STATE_FILE = "gateway.json"
GATEWAY_SOCKET_NAME = "slurm-bb.sock"
PLUGIN_KUBECONFIG_NAME = "slurm-dws.kubeconfig"


def parse_node_name(name: str) -> tuple[NodeRole, int] | None:
    """``("compute", 2)`` for ``compute2``; None for a name that is not a dev cluster node's."""
    for role in (COMPUTE, STORAGE):
        rest = name.removeprefix(role)
        if rest != name and rest.isdigit() and not rest.startswith("0"):
            return role, int(rest)
    return None


class Layout:
    """The paths inside ``state_dir`` (config, munge key and socket, logs, pid files, the gateway socket,
    the nodes' namespace pins) and the nodes, named and numbered."""

    state_dir: Path
    compute_node_count: int
    storage_node_count: int

    def node_names(self, role: NodeRole | None = None) -> list[str]:
        """The nodes' names, compute nodes first (``role`` picks one kind)."""
        counts = {COMPUTE: self.compute_node_count, STORAGE: self.storage_node_count}
        return [
            node_name(kind, index)
            for kind, count in counts.items()
            if role in (None, kind)
            for index in range(1, count + 1)
        ]

    def node_layout(self, network: Network) -> list[Node]:
        """Every node of the cluster on ``network``, compute nodes first."""
        nodes = []
        for name in self.node_names():
            parsed = parse_node_name(name)
            assert parsed is not None
            nodes.append(self.node_on(network, *parsed))
        return nodes

    def node_on(self, network: Network, role: NodeRole, index: int) -> Node:
        name = node_name(role, index)
        return Node(
            name=name,
            role=role,
            index=index,
            address=network.address(role, index),
            ns_dir=self.ns_dir / name,
            host_veth=network.host_veth(role, index),
        )

    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc_dir / "slurm.conf"

    @property
    def munge_dir(self) -> Path:
        return self.state_dir / "munge"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket.2"

    @property
    def slurmdbd_conf(self) -> Path:
        """Next to slurm.conf, where slurmdbd looks for it (it takes no option naming it)."""
        return self.etc_dir / "slurmdbd.conf"

    @property
    def mariadb_dir(self) -> Path:
        """The private MariaDB of slurmdbd: option file, data dir, socket (:mod:`.mariadb`)."""
        return self.state_dir / "mariadb"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def jobs_dir(self) -> Path:
        """World-writable (sticky) scratch dir for job scripts and outputs of the job user."""
        return self.state_dir / "jobs"

    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    def slurmd_log(self, node: str) -> Path:
        """SlurmdLogFile of ``node`` (slurm.conf says ``slurmd.%n.log``)."""
        return self.log_dir / f"slurmd.{node}.log"

    def slurmd_pid_file(self, node: str) -> Path:
        return self.run_dir / f"slurmd.{node}.pid"

    def slurmd_spool(self, node: str) -> Path:
        return self.state_dir / "spool" / f"slurmd.{node}"

    @property
    def ns_dir(self) -> Path:
        """The nodes' namespace pins live below it (a private bind mount of itself while nodes exist)."""
        return self.state_dir / NS_DIR_NAME

    @property
    def network_file(self) -> Path:
        """The cluster's network (id, subnet), kept across ``down``: the next ``up`` keeps the addresses."""
        return self.state_dir / NETWORK_FILE

    @property
    def hosts_file(self) -> Path:
        """/etc/hosts inside every node: the nodes' names and the controller."""
        return self.etc_dir / "hosts"

    @property
    def gateway_socket(self) -> Path:
        """The Unix socket the plugin's burst_buffer.lua talks to."""
        return self.run_dir / GATEWAY_SOCKET_NAME

    @property
    def gateway_log(self) -> Path:
        return self.log_dir / "gateway.log"

    @property
    def plugin_kubeconfig(self) -> Path:
        """The plugin's (and gateway's) kubeconfig, as installed into etc/."""
        return self.etc_dir / PLUGIN_KUBECONFIG_NAME
