"""The dev cluster's lifecycle: ``up`` (idempotent), ``down``, ``status``, its nodes, and its gateway.

``up`` first makes the network (a bridge on a private /24) and the nodes (namespaces pinned under
``state_dir/ns``, :mod:`.nodes`), then renders slurm.conf with their addresses and starts munged,
slurmctld and one slurmd per compute node inside that node. ``down`` stops the daemons and removes the
nodes and the bridge (every process left inside a node is killed), keeping the network's /24 on record
for the next ``up``.

With a :class:`GatewaySetup` the cluster runs slurmlink's real burst buffer plugin: ``burst_buffer.lua`` and
the plugin kubeconfig are installed into ``state_dir/etc`` (:func:`slurmlink.slurm.install.install_plugin`)
and a fourth daemon, ``slurmlink slurm gateway``, is started before slurmctld, because slurmctld calls
``slurm_bb_pools`` through it as soon as it starts.

With ``accounting`` the cluster also runs Slurm's accounting storage: a private MariaDB (:mod:`.mariadb`)
and slurmdbd on it (:mod:`.slurmdbd`), both started before slurmctld, which registers with slurmdbd as it
starts; ``sacct`` and ``sacctmgr`` then work with the cluster's SLURM_CONF. ``down`` stops them with the rest
and keeps the database, so the next ``up`` finds the old jobs.

With ``memory_limits`` Slurm allocates memory to jobs and enforces it with cgroup v1's memory controller
(``task/cgroup``, ``cgroup.conf`` in the etc dir): a job without ``--mem`` gets ``DefMemPerCPU`` (256 MiB per
CPU) instead of a whole node's memory, and a job exceeding its memory ends OUT_OF_MEMORY. ``down`` removes
the cgroups its killed jobs left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurmlink import supervise
from slurmlink.slurm.devcluster import host, nodes, slurmdbd
from slurmlink.slurm.devcluster.config import (
    JOB_ID_BLOCK,
    RESTART_KEYS,
    BurstBufferSetup,
    SlurmConfig,
    first_job_id,
)
from slurmlink.slurm.devcluster.daemons import (
    SLURMD_PREFIX,
    Daemon,
    DaemonSpecs,
    gateway_healthy,
    port_free,
)
from slurmlink.slurm.devcluster.errors import DevClusterError, LogFn, stderr_log, wait_until
from slurmlink.slurm.devcluster.jobs import SlurmClients, summarize_node_states
from slurmlink.slurm.devcluster.layout import (
    COMPUTE,
    CONTROLLER_NAME,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_COMPUTE_NODES,
    DEFAULT_CTLD_PORT,
    DEFAULT_DBD_PORT,
    DEFAULT_JOB_UID,
    DEFAULT_JOB_USER,
    DEFAULT_SLURMD_PORT,
    DEFAULT_STORAGE_NODES,
    GATEWAY_STATE_FILE,
    KUBECONFIG_REF_FILE,
    MAX_COMPUTE_NODES,
    MAX_STORAGE_NODES,
    SETTINGS_FILE,
    STORAGE,
    Network,
    Node,
    NodeRole,
    check_cluster_name,
    parse_node_name,
)
from slurmlink.slurm.devcluster.partitions import (
    PartitionSpec,
    check_partitions,
    default_partition_name,
    default_partitions,
    parse_partitions,
)
from slurmlink.supervise import running_pid, spawn_detached, stop_pid

#: Up and usable: idle, running jobs, or kept for a pending job (22.05 shows "planned" while its burst
#: buffer stages in).
_READY_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned", "reserved"})


@dataclass(frozen=True)
class GatewaySetup:
    """slurmlink's real plugin: install it with this kubeconfig and run ``slurmlink slurm gateway``.

    ``extra_args`` are appended to the gateway's command line (e.g. ``("--transient-grace", "5")``);
    ``slurm_api`` None means: detect it with ``slurmctld -V``.
    """

    kubeconfig: Path
    extra_args: tuple[str, ...] = ()
    slurm_api: str | None = None
    #: Which of Slurm's plugins talks to the gateway: ``lua`` (burst_buffer.lua) or ``datawarp``
    #: (burst_buffer/datawarp running ``slurmlink dw-wlm-cli`` through wrappers in etc/).
    plugin: str = "lua"
    #: datawarp: the pool of jobs that name none (DefaultPool), the one serving access_mode=striped.
    default_pool: str = "gluster"


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``status`` sees it."""

    name: str
    role: NodeRole
    #: None while the cluster has no network (never up).
    address: str | None
    #: Its namespaces are pinned.
    exists: bool
    #: Its slurmd runs (compute nodes; always False for storage nodes, which run none).
    slurmd: bool
    #: ``sinfo``'s state (compute nodes), None if slurmctld does not answer or does not know it.
    state: str | None


@dataclass(frozen=True)
class DevClusterStatus:
    """What is running, so callers (CLI, tests) need not probe pid files themselves."""

    state_dir: Path
    ctld_port: int
    slurmd_port: int
    munged: bool
    slurmctld: bool
    #: The slurmd of every compute node is alive.
    slurmd: bool
    #: The compute nodes' common state (``idle``), or each one's (``compute1=idle compute2=down*``).
    node_state: str | None
    #: By daemon name: ``munged``, ``slurmctld``, ``gateway``, ``slurmd@<node>`` per compute node.
    pids: dict[str, int | None] = field(default_factory=dict)
    #: The gateway daemon is alive.
    gateway: bool = False
    #: The last ``up`` installed slurmlink's plugin, so the gateway should be running.
    gateway_enabled: bool = False
    nodes: tuple[NodeStatus, ...] = ()
    #: The bridge's address (where nodes reach slurmctld), None without a network.
    controller_address: str | None = None
    #: The cluster is set up with accounting storage, so MariaDB and slurmdbd should be running.
    accounting_enabled: bool = False
    mariadb: bool = False
    slurmdbd: bool = False
    dbd_port: int | None = None
    #: The cluster is set up with memory limits (cgroup memory enforcement, DefMemPerCPU).
    memory_limits_enabled: bool = False

    @property
    def running(self) -> bool:
        """All daemons and nodes are there (nodes may still be coming up); the gateway only if enabled,
        MariaDB and slurmdbd only with accounting."""
        return (
            self.munged
            and self.slurmctld
            and self.slurmd
            and all(node.exists for node in self.nodes)
            and (self.gateway or not self.gateway_enabled)
            and ((self.mariadb and self.slurmdbd) or not self.accounting_enabled)
        )


class DevCluster(SlurmConfig, DaemonSpecs, SlurmClients):
    """One Slurm cluster with ``compute_nodes`` slurmd nodes and ``storage_nodes`` storage nodes, all on
    this host, living entirely in ``state_dir``.

    Settings given at ``up`` are saved in ``state_dir/devcluster.json`` so that later ``status``/``down``/
    ``env`` calls (other processes, the CLI) find the same ports and nodes via :meth:`from_state_dir`.
    Its nodes (:attr:`nodes`, :meth:`node`) are where node agents and their file systems run: see
    :meth:`node_command` and :mod:`slurmlink.slurm.devcluster.nodes`.

    ``accounting`` runs slurmdbd on a private MariaDB, slurmdbd listening on ``dbd_port``; off by default,
    as it adds a second or two to ``up`` (more on the first, which makes the database) and most tests
    need no ``sacct``. ``accounting_enforce`` sets ``AccountingStorageEnforce`` (e.g.
    ``("associations", "limits", "safe")``); none by default, so users without an association still run.

    ``memory_limits`` makes Slurm allocate memory and enforce it with cgroup v1's memory controller
    (:data:`~slurmlink.slurm.devcluster.config.MEMORY_LIMIT_LINES`, ``cgroup.conf``): jobs without ``--mem``
    get 256 MiB per CPU, and a job exceeding its memory ends OUT_OF_MEMORY. Off by default; ``up`` checks
    that the host has the controller (:func:`host.check_memory_limits`).
    """

    def __init__(
        self,
        state_dir: Path,
        ctld_port: int = DEFAULT_CTLD_PORT,
        slurmd_port: int = DEFAULT_SLURMD_PORT,
        job_user: str = DEFAULT_JOB_USER,
        job_uid: int = DEFAULT_JOB_UID,
        cluster_name: str = DEFAULT_CLUSTER_NAME,
        log: LogFn | None = None,
        compute_nodes: int = DEFAULT_COMPUTE_NODES,
        storage_nodes: int = DEFAULT_STORAGE_NODES,
        *,
        accounting: bool = False,
        dbd_port: int = DEFAULT_DBD_PORT,
        accounting_enforce: str | Sequence[str] = (),
        partitions: Sequence[PartitionSpec | str] | None = None,
        memory_limits: bool = False,
    ) -> None:
        if not 1 <= compute_nodes <= MAX_COMPUTE_NODES:
            raise DevClusterError(f"compute nodes must be 1 to {MAX_COMPUTE_NODES}, got {compute_nodes}")
        if not 0 <= storage_nodes <= MAX_STORAGE_NODES:
            raise DevClusterError(f"storage nodes must be 0 to {MAX_STORAGE_NODES}, got {storage_nodes}")
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.compute_node_count = compute_nodes
        self.storage_node_count = storage_nodes
        self.ctld_port = ctld_port
        self.slurmd_port = slurmd_port
        self.job_user = job_user
        self.job_uid = job_uid
        self.cluster_name = check_cluster_name(cluster_name)
        #: Its partitions (``--partition`` specs); without any, :func:`default_partitions`.
        self.partitions: tuple[PartitionSpec, ...] = (
            default_partitions()
            if not partitions
            else parse_partitions(p.to_text() if isinstance(p, PartitionSpec) else p for p in partitions)
        )
        check_partitions(self.partitions, self.node_names(COMPUTE))
        self.accounting = accounting
        self.dbd_port = dbd_port
        #: Kept without accounting too (saved for a later ``up`` with it), but only used with it.
        self.accounting_enforce = slurmdbd.parse_enforce(accounting_enforce)
        self.memory_limits = bool(memory_limits)
        self.log: LogFn = log or stderr_log
        #: Pids this object started, by daemon name: alive even while the daemon rewrites its pid file.
        self._spawned: dict[str, int] = {}
        #: Every daemon this object started, in order, so a failed ``up`` can stop what it started.
        self._start_order: list[tuple[Daemon, int]] = []
        self._created_bridge = False
        self._created_nodes: list[Node] = []
        #: The network the last ``up`` recorded (None before the first): the nodes' addresses.
        self.network: Network | None = self._recorded_network()

    @classmethod
    def from_state_dir(
        cls,
        state_dir: Path,
        *,
        log: LogFn | None = None,
        **overrides: Any,
    ) -> DevCluster:
        """Rebuild the cluster object from the settings saved by an earlier ``up``; ``overrides`` win.

        ``None`` overrides are ignored, so CLI options that were not given fall back to the saved values.
        """
        state_dir = Path(state_dir).expanduser().absolute()
        settings: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            settings = dict(json.loads((state_dir / SETTINGS_FILE).read_text()))
        known = {
            "ctld_port",
            "slurmd_port",
            "job_user",
            "job_uid",
            "cluster_name",
            "compute_nodes",
            "storage_nodes",
            "accounting",
            "dbd_port",
            "accounting_enforce",
            "partitions",
            "memory_limits",
        }
        settings = {key: value for key, value in settings.items() if key in known}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(state_dir, log=log, **settings)

    # ------------------------------------------------------------- host setup

    def missing_packages(self) -> list[str]:
        """Packages of :data:`host.PACKAGES` (and, with accounting, :data:`host.ACCOUNTING_PACKAGES`) that
        dpkg does not report as installed."""
        return host.missing_packages(self.accounting)

    def ensure_packages(self) -> None:
        """Install the Debian Slurm + munge packages (with accounting: slurmdbd, MariaDB) if any is missing
        (needs root and apt)."""
        host.ensure_packages(self.log, self.accounting)

    def ensure_job_user(self) -> pwd.struct_passwd:
        """Create the unprivileged job user (root may not use burst buffers) with a home, if missing."""
        return host.ensure_job_user(self.job_user, self.job_uid, self.log)

    def _save_settings(self) -> None:
        settings = {
            "ctld_port": self.ctld_port,
            "slurmd_port": self.slurmd_port,
            "job_user": self.job_user,
            "job_uid": self.job_uid,
            "cluster_name": self.cluster_name,
            "compute_nodes": self.compute_node_count,
            "storage_nodes": self.storage_node_count,
            "accounting": self.accounting,
            "dbd_port": self.dbd_port,
            "accounting_enforce": list(self.accounting_enforce),
            "partitions": [spec.to_text() for spec in self.partitions],
            "memory_limits": self.memory_limits,
        }
        self._write(self.state_dir / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")

    def record_kubeconfig(self, kubeconfig: Path) -> Path:
        """Remember the plugin's kubeconfig, so a later ``dev-cluster up`` without one keeps using it."""
        kubeconfig = Path(kubeconfig).expanduser().absolute()
        if not kubeconfig.is_file():
            raise DevClusterError(f"kubeconfig {kubeconfig} does not exist")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        target = self.state_dir / KUBECONFIG_REF_FILE
        self._write(target, f"{kubeconfig}\n")
        return target

    def recorded_kubeconfig(self) -> Path | None:
        """The kubeconfig path recorded by :meth:`record_kubeconfig`, if any."""
        with contextlib.suppress(OSError):
            text = (self.state_dir / KUBECONFIG_REF_FILE).read_text().strip()
            return Path(text) if text else None
        return None

    @property
    def default_partition(self) -> str | None:
        """The partition jobs without ``--partition`` go to (None if every spec says Default=NO)."""
        return default_partition_name(self.partitions)

    # ------------------------------------------------------------------ nodes

    def _recorded_network(self) -> Network | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return Network.from_json(json.loads(self.network_file.read_text()))
        return None

    @property
    def nodes(self) -> list[Node]:
        """Every node (compute nodes first): name, role, address, namespace files.

        Known once an ``up`` has given the cluster its network (raises :class:`DevClusterError` before);
        whether a node's namespaces exist right now is :func:`nodes.node_exists` (or :meth:`status`).
        """
        if self.network is None:
            raise DevClusterError(f"the dev cluster in {self.state_dir} has no nodes yet: run 'up' first")
        return self.node_layout(self.network)

    @property
    def compute_nodes(self) -> list[Node]:
        """The nodes that run slurmd (``compute1``...), in Slurm's partition."""
        return [node for node in self.nodes if node.role == COMPUTE]

    @property
    def storage_nodes(self) -> list[Node]:
        """The storage nodes (``storage1``...): no slurmd; storage agents and file system servers go there."""
        return [node for node in self.nodes if node.role == STORAGE]

    def node(self, name: str) -> Node:
        """The node called ``name``; :class:`DevClusterError` if the cluster has none by that name."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevClusterError(f"no node {name!r} in the dev cluster (nodes: {', '.join(self.node_names())})")

    @property
    def controller_address(self) -> str:
        """The bridge's address in the host namespace: nodes reach slurmctld (and host services) there."""
        if self.network is None:
            raise DevClusterError(f"the dev cluster in {self.state_dir} has no network yet: run 'up' first")
        return self.network.controller_address

    def node_command(
        self,
        node: str | Node,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> list[str]:
        """The argv running ``argv`` inside ``node`` (a name or a :class:`Node`), as
        :func:`nodes.node_command`."""
        return nodes.node_command(
            self.node(node) if isinstance(node, str) else node, argv, user=user, env=env, cwd=cwd
        )

    def run_in_node(
        self,
        node: str | Node,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node`` and wait (:func:`nodes.run_in_node`: text output captured)."""
        return nodes.run_in_node(
            self.node(node) if isinstance(node, str) else node, argv, user=user, env=env, cwd=cwd, **kw
        )

    def _controller_names(self) -> list[str]:
        """Names of the host in the nodes' /etc/hosts: its hostname, at the bridge's address."""
        name = socket.gethostname()
        return [name] if name and name != CONTROLLER_NAME and parse_node_name(name) is None else []

    def _present_node_dirs(self) -> list[str]:
        """Names of the nodes that have a directory under ``ns_dir`` (made by some earlier ``up``)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                entry.name
                for entry in self.ns_dir.iterdir()
                if entry.is_dir() and parse_node_name(entry.name) is not None
            )
        return []

    def _ensure_network(self, timeout: float) -> None:
        """The bridge and every node, made or repaired; nodes beyond the wanted counts removed.

        Records what it creates in ``_created_*`` so that a failed ``up`` can remove it again.
        """
        recorded = self._recorded_network()
        network, created = nodes.ensure_bridge(str(self.state_dir), recorded, self.log)
        self._created_bridge = created
        if network != recorded:
            self._write(self.network_file, json.dumps(network.to_json(), indent=2) + "\n")
        self.network = network
        nodes.ensure_ns_dir(self.ns_dir)
        wanted = self.nodes
        nodes.write_hosts_file(self.hosts_file, network, wanted, self._controller_names())
        wanted_names = {node.name for node in wanted}
        for name in self._present_node_dirs():
            if name not in wanted_names:
                self._remove_node(self._node_by_name(name), timeout)
        host_links = nodes.links()
        for node in wanted:
            if nodes.node_healthy(node, network, host_links):
                continue
            if node.ns_dir.exists() or node.host_veth in host_links:
                self.log(f"node {node.name} is incomplete; re-creating it")
                self._remove_node(node, timeout)
            self.log(f"creating node {node.name} ({node.role}, {node.address})")
            self._created_nodes.append(node)
            nodes.create_node(node, network, self.hosts_file)

    def ensure_network(self, timeout: float = 10) -> bool:
        """Make (or repair) the bridge and the nodes before anything runs in them, as ``up`` does first;
        returns whether this call created the bridge (the caller then removes it with :meth:`down` if
        what it goes on to do fails).

        For services on the host that the nodes must reach at :attr:`controller_address` (the quick
        start's API server, which must listen there before the nodes' agents start): the address
        exists only once the bridge does.
        """
        if os.geteuid() != 0:
            raise DevClusterError("the dev cluster's nodes are namespaces made by root: run 'up' as root")
        if self.memory_limits:
            host.check_memory_limits()
        self.ensure_packages()
        self._prepare_dirs()
        self._created_bridge, self._created_nodes = False, []
        try:
            self._ensure_network(timeout)
        except BaseException:
            self._undo_network(timeout)
            raise
        return self._created_bridge

    def _node_by_name(self, name: str) -> Node:
        parsed = parse_node_name(name)
        if parsed is None or self.network is None:
            raise DevClusterError(f"{name!r} is not a node of this dev cluster")
        return self.node_on(self.network, *parsed)

    def _remove_node(self, node: Node, timeout: float) -> None:
        """Stop the node's slurmd (if any), every other process inside it, and remove the node."""
        if node.is_compute:
            self._stop(self._slurmd_daemon(node.name), timeout)
        self.log(f"removing node {node.name}")
        nodes.remove_node(node, timeout, self.log)

    def _teardown_network(self, timeout: float) -> None:
        """Remove every node (any process left inside is killed), the bridge and the pin directory."""
        if self.network is not None:
            for name in self._present_node_dirs():
                self._remove_node(self._node_by_name(name), timeout)
            nodes.remove_bridge(self.network, self.log)
        nodes.release_ns_dir(self.ns_dir)

    def _undo_network(self, timeout: float) -> None:
        """After a failed ``up``: remove the nodes it created, and everything if it created the bridge."""
        try:
            if self._created_bridge:
                self._teardown_network(timeout)
            else:
                for node in reversed(self._created_nodes):
                    self._remove_node(node, timeout)
        except DevClusterError as exc:
            self.log(f"could not remove the network this 'up' made: {exc}")

    # ----------------------------------------------------------- processes

    def _pid(self, daemon: Daemon) -> int | None:
        """Pid of ``daemon`` if its pid file names a live process that really is our daemon."""
        return running_pid(daemon.pid_file, daemon.matches, daemon.environ_matches if daemon.env else None)

    def _start(self, daemon: Daemon) -> int:
        self.log(f"starting {daemon.name}")
        env = {**os.environ, "SLURM_CONF": str(self.slurm_conf), "PYTHONUNBUFFERED": "1", **dict(daemon.env)}
        pid = spawn_detached(daemon.argv, daemon.log_file, env=env, cwd=self.state_dir)
        self._spawned[daemon.name] = pid
        self._start_order.append((daemon, pid))
        # Written right away so "down" can find it even if the daemon dies before writing its own.
        supervise.write_pid(daemon.pid_file, pid)
        return pid

    def _died_check(self, daemon: Daemon) -> Callable[[], None]:
        """Fails once ``daemon`` has exited: by its process handle if this object started it.

        A daemon rewrites its pid file at start-up (munged unlinks it, then writes it) and its /proc
        cmdline reads empty until the kernel has finished exec, so neither says "dead" reliably.
        """
        spawned = self._spawned.get(daemon.name)
        if spawned is not None and supervise.is_child(spawned):
            return supervise.died_check(spawned, daemon.name, lambda: self._log_tail(daemon))

        def check() -> None:
            if self._pid(daemon) is None:
                raise DevClusterError(f"{daemon.name} exited during startup:\n{self._log_tail(daemon)}")

        return check

    def _stop_started_since(self, first: int) -> None:
        """Stop the daemons started since ``_start_order[first]``, newest first (after a failed ``up``)."""
        started = self._start_order[first:]
        if started:
            self.log(f"stopping what this 'up' started: {', '.join(d.name for d, _ in started)}")
        for daemon, pid in reversed(started):
            if supervise.process_alive(pid):
                try:
                    stop_pid(pid, daemon.name, 10, self.log)
                except supervise.SupervisionError as exc:
                    self.log(f"could not stop {daemon.name} (pid {pid}): {exc}")
                    continue
            if supervise.read_pid(daemon.pid_file) in (pid, None):
                with contextlib.suppress(FileNotFoundError):
                    daemon.pid_file.unlink()
        if any(d.name == "gateway" for d, _ in started):
            with contextlib.suppress(FileNotFoundError):
                self.gateway_socket.unlink()

    def _log_tail(self, daemon: Daemon, lines: int = 15) -> str:
        return supervise.log_tail([daemon.log_file, self.log_dir / f"{daemon.name}.log"], lines)

    def _stop(self, daemon: Daemon, timeout: float) -> None:
        pid = self._pid(daemon)
        if pid is None:
            if daemon.pid_file.exists():
                daemon.pid_file.unlink()
            return
        stop_pid(pid, daemon.name, timeout, self.log)
        with contextlib.suppress(FileNotFoundError):
            daemon.pid_file.unlink()

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        for path, mode in [
            (self.etc_dir, 0o755),
            (self.munge_dir, 0o755),  # munged: socket dir must be executable by all
            (self.log_dir, 0o755),
            (self.run_dir, 0o755),
            (self.state_dir / "state", 0o700),
            (self.state_dir / "spool", 0o755),
            *((self.slurmd_spool(node), 0o755) for node in self.node_names(COMPUTE)),
            (self.jobs_dir, 0o1777),
        ]:
            path.mkdir(exist_ok=True)
            path.chmod(mode)
        if not self.munge_key.exists():
            fd = os.open(self.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as key:
                key.write(os.urandom(1024))
        self.munge_key.chmod(0o600)

    # ------------------------------------------------------------ lifecycle

    def up(
        self,
        burst_buffer: BurstBufferSetup | None = None,
        wait_timeout: float = 60,
        *,
        extra_lines: Iterable[str] = (),
        extra_files: Mapping[str, str] | None = None,
        gateway: GatewaySetup | None = None,
        partition_default_time: int | None = None,
    ) -> DevClusterStatus:
        """Start the cluster (or refresh a running one) and wait until every compute node is idle.

        Makes the network and the nodes first (or repairs them, or removes nodes beyond the counts).

        ``gateway`` installs slurmlink's real plugin (instead of ``burst_buffer``) and runs its gateway,
        started before slurmctld and waited for until it reports healthy. Without it a gateway left by an
        earlier ``up`` is stopped.

        Idempotent: daemons that are already running are kept; if the rendered configuration changed they
        get ``scontrol reconfigure`` (or a restart, for keys such as ports or BurstBufferType that need
        one). An unchanged config is not reconfigured, because a reconfigure delays the next burst buffer
        job's stage-in by 10+ s. The gateway is restarted only when its kubeconfig or options changed.

        Partitions (:attr:`partitions`) added, removed or changed take a reconfigure, as do node features;
        a new cluster name takes a restart, as does turning :attr:`memory_limits` on or off.
        ``partition_default_time`` (minutes) is the DefaultTime of partitions whose spec sets none (the
        quick start's bank prices jobs without ``--time`` by it).
        """
        started = time.monotonic()
        if gateway is not None and burst_buffer is not None:
            raise DevClusterError("give either a burst_buffer plugin or a gateway setup, not both")
        if os.geteuid() != 0:
            raise DevClusterError("the dev cluster runs slurmctld/slurmd as root: run 'up' as root")
        if self.memory_limits:
            host.check_memory_limits()
        self.ensure_packages()
        self.ensure_job_user()
        host.check_reachable_by(self.state_dir, self.job_user)
        self._prepare_dirs()
        plugin_conf_changed = False
        if gateway is not None:
            burst_buffer, plugin_conf_changed = self._install_plugin(gateway)

        first_new = len(self._start_order)
        self._created_bridge, self._created_nodes = False, []
        try:
            self._ensure_network(timeout=10)
            changed = self.render_config(
                burst_buffer,
                extra_lines=extra_lines,
                extra_files=extra_files,
                partition_default_time=partition_default_time,
            )
            if plugin_conf_changed:
                changed.add("*")
            self._save_settings()
            self._start_daemons(changed, gateway, wait_timeout)
        except BaseException:
            # A failed up leaves nothing of its own behind; the exception carries the reason.
            self._stop_started_since(first_new)
            self._undo_network(timeout=10)
            raise
        names = self.node_names()
        self.log(
            f"nodes {', '.join(names)} ready after {time.monotonic() - started:.1f} s; "
            f"SLURM_CONF={self.slurm_conf}"
        )
        return self.status()

    def _start_daemons(self, changed: set[str], gateway: GatewaySetup | None, wait_timeout: float) -> None:
        """Restart or reconfigure what runs, start what does not, and wait until the nodes are idle."""
        daemons = {d.name: d for d in self._daemons()}
        slurmds = [name for name in daemons if name.startswith(SLURMD_PREFIX)]
        running = {name: self._pid(d) is not None for name, d in daemons.items()}
        self._stop(self._legacy_slurmd(), 10)  # from before nodes had namespaces: not in the config any more
        if changed & RESTART_KEYS and (running["slurmctld"] or any(running[n] for n in slurmds)):
            self.log(f"restarting Slurm for changed {', '.join(sorted(changed & RESTART_KEYS))}")
            for name in [*slurmds, "slurmctld"]:
                self._stop(daemons[name], 10)
                running[name] = False
        elif changed and running["slurmctld"]:
            self.log("configuration changed; running scontrol reconfigure")
            result = self.run_slurm(["scontrol", "reconfigure"], timeout=30)
            if result.returncode != 0:
                raise DevClusterError(f"scontrol reconfigure failed: {result.stderr.strip()}")
        elif all(running[name] for name in ("munged", "slurmctld", *slurmds)):
            self.log("already running; configuration unchanged")
        if "clustername" in changed:
            # slurmctld (stopped above) refuses to start on state saved under another ClusterName, its
            # guard against two clusters sharing a StateSaveLocation; this state dir is this cluster's.
            (self.state_dir / "state" / "clustername").unlink(missing_ok=True)

        if not running["munged"]:
            self._check_ports()  # before anything starts, so a clash fails cleanly
            stale = [self.munge_socket, self.munge_socket.with_name(self.munge_socket.name + ".lock")]
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._start(daemons["munged"])
            wait_until(
                self.munge_socket.exists, 20, "the munge socket", check=self._died_check(daemons["munged"])
            )
        elif not running["slurmctld"]:
            self._check_ports()
        # slurmctld registers with slurmdbd, and calls slurm_bb_pools through the gateway, as it starts.
        watched = self._ensure_accounting(wait_timeout)
        gateway_daemon = self._ensure_gateway(gateway, wait_timeout)
        for name in ("slurmctld", *slurmds):
            if not running[name]:
                self._start(daemons[name])

        watched += [daemons["slurmctld"], *(daemons[name] for name in slurmds)]
        if gateway_daemon is not None:
            watched.append(gateway_daemon)
        self._wait_idle(wait_timeout, watched)

    # -------------------------------------------------------------- accounting

    def _ensure_accounting(self, timeout: float) -> list[Daemon]:
        """With accounting: MariaDB and slurmdbd running, the database, the cluster, its default account
        and the job user's association there; the daemons to watch. Without: both stopped (the database
        stays on disk for a later ``up`` with accounting)."""
        mariadbd, dbd = self._daemon("mariadbd"), self._daemon("slurmdbd")
        if not self.accounting:
            self._stop(dbd, 10)  # after slurmctld (stopped for the config change): it flushes to slurmdbd
            self._stop(mariadbd, 30)
            return []
        started = time.monotonic()
        database = self.mariadb
        if database.prepare(self.log) and self._pid(mariadbd) is not None:
            self.log("MariaDB's my.cnf changed; restarting it")
            self._stop(dbd, 10)
            self._stop(mariadbd, 30)
        if self._pid(mariadbd) is None:
            database.socket.unlink(missing_ok=True)  # no server of ours runs, so it is stale
            self._start(mariadbd)
        wait_until(database.ready, timeout, f"MariaDB on {database.socket}", check=self._died_check(mariadbd))
        password = database.password(slurmdbd.STORAGE_USER)
        database.ensure_database(slurmdbd.DATABASE, slurmdbd.STORAGE_USER, password)
        conf = slurmdbd.render_slurmdbd_conf(
            dbd_port=self.dbd_port,
            munge_socket=self.munge_socket,
            log_file=self.log_dir / "slurmdbd.log",
            pid_file=dbd.pid_file,
            storage_password=password,
        )
        if slurmdbd.write_slurmdbd_conf(self.slurmdbd_conf, conf) and self._pid(dbd) is not None:
            self.log("slurmdbd.conf changed; restarting slurmdbd")
            self._stop(dbd, 10)
        if self._pid(dbd) is None:
            self._check_ports()  # again: slurmctld may run, so up did not check DbdPort yet
            self._start(dbd)
        wait_until(
            lambda: slurmdbd.dbd_answers(self.run_slurm),
            timeout,
            f"slurmdbd to answer on port {self.dbd_port}",
            check=self._died_check(dbd),
        )
        slurmdbd.register(self.run_slurm, self.cluster_name, [self.job_user], self.log)
        took = time.monotonic() - started
        self.log(f"accounting ready in {took:.1f} s (MariaDB, slurmdbd on port {self.dbd_port})")
        return [mariadbd, dbd]

    # ----------------------------------------------------------------- gateway

    def _install_plugin(self, gateway: GatewaySetup) -> tuple[BurstBufferSetup, bool]:
        """Install slurmlink's plugin into etc/; returns it as a setup and whether burst_buffer.conf changed.

        install_plugin writes the files itself; the returned setup carries the same texts so that
        render_config leaves them alone.
        """
        from slurmlink.slurm.install import CONF_NAME, LUA_NAME, InstallError, install_plugin

        kubeconfig = Path(gateway.kubeconfig).expanduser().absolute()
        if not kubeconfig.is_file():
            raise DevClusterError(f"kubeconfig {kubeconfig} does not exist")
        if len(os.fsencode(str(self.gateway_socket))) > 107:
            raise DevClusterError(
                f"the gateway socket {self.gateway_socket} would exceed the 107-byte limit of Unix socket "
                "paths; use a shorter --state-dir"
            )
        if kubeconfig != self.plugin_kubeconfig:
            self.record_kubeconfig(kubeconfig)
        if gateway.plugin == "datawarp":
            return self._datawarp_setup(kubeconfig, gateway.default_pool)
        if gateway.plugin != "lua":
            raise DevClusterError(f"unknown burst buffer plugin {gateway.plugin!r}: lua or datawarp")
        try:
            result = install_plugin(
                self.etc_dir,
                socket_path=self.gateway_socket,
                kubeconfig_source=kubeconfig,
                slurm_api=gateway.slurm_api,
                backup_foreign=False,  # etc/ belongs to the dev cluster: nothing foreign to keep
                log=self.log,
            )
        except InstallError as exc:
            raise DevClusterError(f"cannot install slurmlink's burst buffer plugin: {exc}") from exc
        setup = BurstBufferSetup(
            lua_source=(self.etc_dir / LUA_NAME).read_text(), conf_text=(self.etc_dir / CONF_NAME).read_text()
        )
        return setup, self.etc_dir / CONF_NAME in result.written

    def _datawarp_setup(self, kubeconfig: Path, default_pool: str) -> tuple[BurstBufferSetup, bool]:
        """burst_buffer/datawarp with GetSysState/GetSysStatus wrappers of ``slurmlink dw-wlm-cli`` that
        know this cluster's gateway socket; the gateway's kubeconfig copied into etc/."""
        import slurmlink
        from slurmlink.auth.pki import atomic_write_bytes
        from slurmlink.slurm import plugin

        data = kubeconfig.read_bytes()
        if kubeconfig != self.plugin_kubeconfig and (
            not self.plugin_kubeconfig.exists() or self.plugin_kubeconfig.read_bytes() != data
        ):
            atomic_write_bytes(self.plugin_kubeconfig, data, 0o600)
        package_root = Path(slurmlink.__file__).resolve().parent.parent
        state = self.etc_dir / plugin.DATAWARP_CLI_NAME
        status = self.etc_dir / plugin.DATAWARP_STATUS_NAME
        try:
            programs = (
                (
                    state.name,
                    plugin.render_datawarp_wrapper(sys.executable, package_root, self.gateway_socket),
                ),
                (
                    status.name,
                    plugin.render_datawarp_wrapper(
                        sys.executable, package_root, self.gateway_socket, status=True
                    ),
                ),
            )
            conf = plugin.datawarp_conf_text(state, status, default_pool)
        except ValueError as exc:
            raise DevClusterError(f"cannot set up burst_buffer/datawarp: {exc}") from exc
        return (
            BurstBufferSetup(
                lua_source=None, conf_text=conf, plugin_type=plugin.DATAWARP_TYPE, programs=programs
            ),
            False,
        )

    def _gateway_state(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.run_dir / GATEWAY_STATE_FILE).read_text())
            return state if isinstance(state, dict) else None
        return None

    def _ensure_gateway(self, gateway: GatewaySetup | None, timeout: float) -> Daemon | None:
        """Start, keep, restart or stop the gateway so that it matches ``gateway``; wait until healthy."""
        state_file = self.run_dir / GATEWAY_STATE_FILE
        if gateway is None:
            self._stop(self._gateway_daemon(), 10)
            with contextlib.suppress(FileNotFoundError):
                state_file.unlink()
            return None
        daemon = self._gateway_daemon(gateway.extra_args)
        wanted = {
            "argv": list(daemon.argv),
            "kubeconfig_sha256": hashlib.sha256(self.plugin_kubeconfig.read_bytes()).hexdigest(),
        }
        pid = self._pid(daemon)
        if pid is not None and (
            self._gateway_state() != wanted or supervise.cmdline(pid) != list(daemon.argv)
        ):
            self.log("gateway kubeconfig or options changed; restarting it")
            self._stop(daemon, 10)
            pid = None
        if pid is None:
            # No gateway of ours runs, so a socket file left by one that was killed is stale.
            with contextlib.suppress(FileNotFoundError):
                self.gateway_socket.unlink()
            self._start(daemon)
            self._write(state_file, json.dumps(wanted, indent=2) + "\n")
        try:
            wait_until(
                lambda: gateway_healthy(self.gateway_socket),
                timeout,
                f"the gateway to answer GET /v1/healthz on {self.gateway_socket}",
                check=self._died_check(daemon),
            )
        except DevClusterError as exc:
            if "timed out" not in str(exc):
                raise
            raise DevClusterError(
                f"{exc}; it reports healthy once it has synced with the slurmlink API, so check that the "
                f"API in {self.plugin_kubeconfig} is reachable:\n{self._log_tail(daemon)}"
            ) from None
        return daemon

    def _check_ports(self) -> None:
        """SlurmctldPort (and with accounting DbdPort) must be free on the host, unless our own daemon has
        it (slurmds listen in their nodes' own network stacks)."""
        wanted = [("slurmctld", "SlurmctldPort", self.ctld_port, "--ctld-port")]
        if self.accounting:
            wanted.append(("slurmdbd", "DbdPort", self.dbd_port, "--dbd-port"))
        taken = [
            f"{key} {port} (pick another with {option})"
            for daemon, key, port, option in wanted
            if self._pid(self._daemon(daemon)) is None and not port_free(port)
        ]
        if taken:
            raise DevClusterError(f"port(s) already in use: {'; '.join(taken)}")

    def _wait_idle(self, timeout: float, daemons: Sequence[Daemon]) -> None:
        checks = [self._died_check(d) for d in daemons]
        last_resume = [-1e9]

        names = self.node_names(COMPUTE)

        def probe() -> bool:
            states = self.node_states()
            if states is None:
                return False
            ready, stuck = True, []
            for name in names:
                state = states.get(name, "unknown")
                base = state.split("+")[0].rstrip("*~#!%$@^-").lower()
                # A fresh node comes up idle; on a re-run it may be busy with jobs, which is just as ready.
                if base not in _READY_STATES or state.endswith("*"):
                    ready = False
                if base.startswith(("down", "drain", "fail")):
                    stuck.append(name)
            if stuck and time.monotonic() - last_resume[0] > 2:
                # Left over from an unclean stop; ReturnToService=2 does not undo an admin "down".
                self.log(f"node state {', '.join(f'{n}={states[n]}' for n in stuck)}; resuming")
                resume = ["scontrol", "update", f"nodename={','.join(stuck)}", "state=resume"]
                self.run_slurm(resume, timeout=10)
                last_resume[0] = time.monotonic()
            return ready

        def check() -> None:
            for check_one in checks:
                check_one()

        wait_until(probe, timeout, f"nodes {', '.join(names)} to become idle", check=check)

    def down(self, purge: bool = False, timeout: float = 10) -> None:
        """Stop the daemons this cluster started (by pid file, after checking /proc cmdline), then remove
        its nodes (killing whatever still runs inside them) and its bridge.

        State, logs, config and the network's /24 on record stay unless ``purge``, which deletes the whole
        state dir. The memory cgroups of the jobs that were killed with the nodes are removed.
        """
        if purge and self.state_dir.exists():
            self._check_purgeable()
        # slurmscriptd exits with slurmctld; the gateway outlives slurmctld's last callbacks.
        names = {*self._present_node_dirs(), *self.node_names()}
        slurmds = [self._slurmd_daemon(name) for name in sorted(names) if name.startswith(COMPUTE)]
        for daemon in [*slurmds, self._legacy_slurmd()]:
            self._stop(daemon, timeout)
        # slurmdbd after slurmctld, which sends it what it still holds; MariaDB after slurmdbd.
        for name in ("slurmctld", "gateway", "slurmdbd", "mariadbd", "munged"):
            self._stop(self._daemon(name), timeout)
        with contextlib.suppress(FileNotFoundError):
            self.gateway_socket.unlink()
        self._teardown_network(timeout)
        self._remove_job_cgroups(names)
        if purge and self.state_dir.exists():
            self.log(f"purging {self.state_dir}")
            shutil.rmtree(self.state_dir)

    def _remove_job_cgroups(self, names: Iterable[str]) -> None:
        """Remove the memory cgroups left on the nodes ``names`` by this cluster's jobs (with memory limits
        they are numbered from the cluster's FirstJobId)."""
        if self.network is None:
            return
        first = first_job_id(self.network)
        computes = sorted(name for name in names if name.startswith(COMPUTE))
        try:
            host.remove_job_cgroups(computes, range(first, first + JOB_ID_BLOCK), self.log)
        except OSError as exc:
            self.log(f"could not remove the jobs' memory cgroups: {exc}")

    def _check_purgeable(self) -> None:
        if not (self.state_dir / SETTINGS_FILE).exists() and not self.slurm_conf.exists():
            raise DevClusterError(f"refusing to purge {self.state_dir}: it does not look like a dev cluster")

    def status(self) -> DevClusterStatus:
        """Which daemons run, which nodes exist, and their state as slurmctld sees it."""
        pids = {d.name: self._pid(d) for d in self._daemons()}
        asked = pids["slurmctld"] is not None and pids["munged"] is not None
        states = (self.node_states() if asked else None) or {}
        node_state = summarize_node_states(self.node_names(COMPUTE), states) if asked and states else None
        node_rows = []
        for name in self.node_names():
            parsed = parse_node_name(name)
            assert parsed is not None
            node = self._node_by_name(name) if self.network is not None else None
            node_rows.append(
                NodeStatus(
                    name=name,
                    role=parsed[0],
                    address=node.address if node is not None else None,
                    exists=node is not None and nodes.node_exists(node),
                    slurmd=pids.get(f"{SLURMD_PREFIX}{name}") is not None,
                    state=states.get(name),
                )
            )
        return DevClusterStatus(
            state_dir=self.state_dir,
            ctld_port=self.ctld_port,
            slurmd_port=self.slurmd_port,
            munged=pids["munged"] is not None,
            slurmctld=pids["slurmctld"] is not None,
            slurmd=all(pids[f"{SLURMD_PREFIX}{n}"] is not None for n in self.node_names(COMPUTE)),
            node_state=node_state,
            pids=pids,
            gateway=pids["gateway"] is not None,
            gateway_enabled=(self.run_dir / GATEWAY_STATE_FILE).exists(),
            nodes=tuple(node_rows),
            controller_address=self.network.controller_address if self.network is not None else None,
            accounting_enabled=self.accounting,
            mariadb=pids["mariadbd"] is not None,
            slurmdbd=pids["slurmdbd"] is not None,
            dbd_port=self.dbd_port if self.accounting else None,
            memory_limits_enabled=self.memory_limits,
        )

    def env(self) -> dict[str, str]:
        """Environment for Slurm clients talking to this cluster, the nodes by role (comma-separated) and,
        once the cluster has a network, the controller's address as the nodes see it."""
        env = {
            "SLURM_CONF": str(self.slurm_conf),
            "SLURMLINK_JOB_USER": self.job_user,
            "SLURMLINK_COMPUTE_NODES": ",".join(self.node_names(COMPUTE)),
            "SLURMLINK_STORAGE_NODES": ",".join(self.node_names(STORAGE)),
        }
        if self.network is not None:
            env["SLURMLINK_CONTROLLER_ADDRESS"] = self.network.controller_address
        return env
