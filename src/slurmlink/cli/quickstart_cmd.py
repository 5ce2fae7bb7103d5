"""``slurmlink quickstart``: the whole system on one host, for trying it out.

``up`` makes the dev cluster's network and nodes, starts the API server (``slurmlink serve``, detached) on
``--listen`` and on the cluster bridge's address (where the nodes reach the host), issues the Slurm plugin's
credentials from its CA, brings up Slurm with slurmlink's burst buffer plugin and its gateway (and, unless
``--no-accounting``, Slurm's accounting storage: slurmdbd on a private MariaDB, for sacct), starts one
storage agent inside each storage node (on a sparse loop file) and a compute agent (``agent --compute``,
which mounts burst buffers) inside each compute node, and makes the default storage pools; then it
prints how to submit the DWS install guide's test job and watch its Workflow. Everything lives under one
directory:

    DIR/quickstart.json         settings of the last 'up' (the --listen address, the storage size)
    DIR/server/                 the server's state: database, CA, admin.kubeconfig
    DIR/slurm-dws.kubeconfig    the plugin's credentials (role workload-manager, namespace slurm)
    DIR/cluster/                the dev cluster (slurm.conf, munge, Slurm state, gateway socket, logs,
                                the nodes' namespace pins under ns/, the accounting database under
                                mariadb/)
    DIR/storage/                per storage node: NODE.img (the loop file), NODE/ (the agent's state dir,
                                its node-agent.kubeconfig, pool/ where the node mounts its device);
                                per compute node: NODE/ (its compute agent's state dir and kubeconfig)
    DIR/run/server.pid, DIR/run/agent.NODE.pid, DIR/log/server.log, DIR/log/agent.NODE.log

Every step is idempotent, so ``up`` can be re-run at any time; it only restarts what changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
from pathlib import Path
from typing import Any

import click

from slurmlink import supervise
from slurmlink.agent.devcluster import DEFAULT_POOLS, DevClusterAgents, StorageSetupError
from slurmlink.cli.dev_cluster import (
    accounting_options,
    accounting_rows,
    check_accounting_options,
    memory_limits_option,
    memory_limits_row,
    node_count_options,
    node_rows,
    partition_options,
    partition_row,
)
from slurmlink.cpu_priority import COLOCATED_SERVE_NICE
from slurmlink.resources.errors import ApiError
from slurmlink.serve_process import ServeError, ServeProcess
from slurmlink.slurm.devcluster import (
    DEFAULT_ACCOUNT,
    DEFAULT_CTLD_PORT,
    DEFAULT_SLURMD_PORT,
    DevCluster,
    DevClusterError,
    GatewaySetup,
    gateway_healthy,
)
from slurmlink.slurm.devcluster.banksetup import BANK_DEFAULT_TIME, bank_hook_files
from slurmlink.slurm.devcluster.config import DEF_MEM_PER_CPU
from slurmlink.slurm.devcluster.partitions import PartitionSpec
from slurmlink.supervise import running_pid, stop_pid

DEFAULT_DIR = Path("/var/tmp/slurmlink/quickstart")
DEFAULT_LISTEN = "127.0.0.1:8443"
#: Each storage node's loop file: sparse, so only what is written takes disk space. XFS keeps about
#: 64 MiB of it for its log, so a 1 GiB file would not hold one 1 GiB granule.
DEFAULT_STORAGE_SIZE = "4GiB"
SETTINGS_FILE = "quickstart.json"
PLUGIN_USER = "slurm-dws"
PLUGIN_ROLE = "workload-manager"
PLUGIN_NAMESPACE = "slurm"

#: The "Submit a test job" example of the DWS install guide, as is.
EXAMPLE_JOB = """\
#!/bin/sh
#SBATCH --time=1
#DW
/bin/hostname
srun -l /bin/hostname
srun -l /bin/pwd
"""
EXAMPLE_JOB_NAME = "dws-test"
#: Under burst_buffer/datawarp a bare "#DW" is no request: a DataWarp scratch buffer instead.
DATAWARP_EXAMPLE_JOB = """\
#!/bin/sh
#SBATCH --time=1
#DW jobdw capacity=1GiB access_mode=striped type=scratch
/bin/hostname
srun -l sh -c 'touch "$DW_JOB_STRIPED/$(hostname)"; echo "DW_JOB_STRIPED=$DW_JOB_STRIPED"'
ls "$DW_JOB_STRIPED"
"""


def example_job(plugin: str | None) -> str:
    """The job script ``up`` leaves in the jobs directory for the plugin in use."""
    return DATAWARP_EXAMPLE_JOB if plugin == "datawarp" else EXAMPLE_JOB


class QuickstartError(RuntimeError):
    """The quick start could not do what was asked; the message says how to fix it."""


def _progress(message: str) -> None:
    # stderr, so the instructions on stdout stay readable on their own.
    click.echo(f"[quickstart] {message}", err=True)


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise QuickstartError(f"--listen must be HOST:PORT, e.g. 127.0.0.1:8443, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Quickstart:
    """The quick start's processes and files under one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).expanduser().absolute()

    # ------------------------------------------------------------------ paths

    @property
    def server_dir(self) -> Path:
        return self.dir / "server"

    @property
    def cluster_dir(self) -> Path:
        return self.dir / "cluster"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.server_dir / "admin.kubeconfig"

    @property
    def plugin_kubeconfig(self) -> Path:
        return self.dir / f"{PLUGIN_USER}.kubeconfig"

    @property
    def storage_dir(self) -> Path:
        return self.dir / "storage"

    def agents(self, cluster: DevCluster) -> DevClusterAgents:
        """The storage agents of the cluster's storage nodes, with their files under DIR/storage."""
        return DevClusterAgents(cluster, self.storage_dir, self.dir / "run", self.dir / "log", _progress)

    @property
    def server_pid_file(self) -> Path:
        return self.dir / "run" / "server.pid"

    @property
    def server_log(self) -> Path:
        return self.dir / "log" / "server.log"

    def cluster(
        self,
        ctld_port: int | None = None,
        slurmd_port: int | None = None,
        *,
        compute_nodes: int | None = None,
        storage_nodes: int | None = None,
        accounting: bool | None = None,
        dbd_port: int | None = None,
        accounting_enforce: str | None = None,
        cluster_name: str | None = None,
        partitions: tuple[PartitionSpec, ...] | None = None,
        memory_limits: bool | None = None,
    ) -> DevCluster:
        """The dev cluster; ports, node counts, accounting settings, name, partitions and memory limits not
        given are its last ``up``'s (else the defaults)."""
        return DevCluster.from_state_dir(
            self.cluster_dir,
            log=_progress,
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            compute_nodes=compute_nodes,
            storage_nodes=storage_nodes,
            accounting=accounting,
            dbd_port=dbd_port,
            accounting_enforce=accounting_enforce,
            cluster_name=cluster_name,
            partitions=partitions,
            memory_limits=memory_limits,
        )

    # --------------------------------------------------------------- settings

    def _saved(self, key: str) -> str | None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads((self.dir / SETTINGS_FILE).read_text()).get(key)
            return str(value) if value else None
        return None

    def saved_listen(self) -> str | None:
        return self._saved("listen")

    def saved_bank(self, accounting: bool) -> bool:
        """Whether the last ``up`` ran the bank's Slurm hooks; else: with accounting (it finds the user's
        default account there)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads((self.dir / SETTINGS_FILE).read_text()).get("bank")
            if isinstance(value, bool):
                return value
        return accounting

    def saved_accounting(self) -> bool:
        """Whether the last ``up`` ran accounting storage; True for a quick start that never said."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads((self.dir / SETTINGS_FILE).read_text()).get("accounting")
            if isinstance(value, bool):
                return value
        return True

    def _save_settings(
        self,
        listen: str,
        storage_size: str,
        storage_capacity: str | None,
        plugin: str = "lua",
        accounting: bool = True,
        bank: bool = True,
    ) -> None:
        path = self.dir / SETTINGS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        settings = {
            "listen": listen,
            "storage_size": storage_size,
            "storage_capacity": storage_capacity,
            "burst_buffer_plugin": plugin,
            "accounting": accounting,
            "bank": bank,
        }
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
        tmp.replace(path)

    # ----------------------------------------------------------------- server

    def server(
        self,
        listen: str,
        node_address: str | None = None,
        cluster_name: str | None = None,
        slurm_conf: Path | None = None,
    ) -> ServeProcess:
        """``slurmlink serve`` on DIR/server, listening on ``listen``; detached, with a pid file.

        ``node_address`` is where the cluster's nodes reach the host (the bridge): the server also
        listens there (same port), unless ``listen`` is a wildcard that covers it already, and its
        certificate names it either way. With ``slurm_conf`` it runs the job bridge against that
        cluster, with job directories in DIR/jobs.
        """
        host, port = _split_listen(listen)
        extra: tuple[str, ...] = ()
        if node_address is not None and node_address != host:
            wildcard = host in ("0.0.0.0", "::", "")
            extra = ("--host", node_address) if wildcard else ("--extra-listen", f"{node_address}:{port}")
        return ServeProcess(
            self.server_dir,
            port,
            host=host,
            log_path=self.server_log,
            # It shares the host with slurmctld: stage-in waves must not slow down submissions.
            extra_args=(
                "--log-format",
                "console",
                "--nice",
                str(COLOCATED_SERVE_NICE),
                *(("--cluster-name", cluster_name) if cluster_name else ()),
                *(
                    ("--bridge", "--slurm-conf", str(slurm_conf), "--bridge-root", str(self.jobs_dir))
                    if slurm_conf is not None
                    else ()
                ),
                *extra,
            ),
            pid_file=self.server_pid_file,
            ignore_host_config=False,
        )

    def node_url(self, listen: str, node_address: str) -> str:
        """The API's URL as the cluster's nodes reach it."""
        return f"https://{node_address}:{_split_listen(listen)[1]}"

    def _is_our_server(self, argv: list[str]) -> bool:
        """A reused pid is never mistaken for our server: python, ``serve``, and our state dir."""
        if not argv or not Path(argv[0]).name.startswith("python") or "serve" not in argv:
            return False
        with contextlib.suppress(ValueError, IndexError):
            return argv[argv.index("--state-dir") + 1] == str(self.server_dir)
        return False

    def server_pid(self) -> int | None:
        return running_pid(self.server_pid_file, self._is_our_server)

    def server_listen(self, pid: int) -> str | None:
        argv = supervise.cmdline(pid)
        with contextlib.suppress(ValueError, IndexError):
            return argv[argv.index("--listen") + 1]
        return None

    def server_url(self, listen: str) -> str:
        return self.server(listen).url

    def server_ready(self, listen: str) -> bool:
        """/readyz answers 200, verified with the CA of the admin kubeconfig written for ``listen``."""
        return self.server(listen).ready()

    def _log_tail(self, lines: int = 20) -> str:
        return supervise.log_tail([self.server_log], lines)

    @property
    def jobs_dir(self) -> Path:
        """Where the job bridge makes SlurmJobs' directories (the nodes share this host's files)."""
        return self.dir / "jobs"

    def ensure_server(
        self,
        listen: str,
        timeout: float,
        node_address: str | None = None,
        cluster_name: str | None = None,
        slurm_conf: Path | None = None,
    ) -> tuple[str, ServeProcess | None]:
        """Start ``slurmlink serve`` detached (or keep the running one) and wait for /readyz.

        Returns the URL and the server if this call started it (so that a later failure can stop it).
        """
        pid = self.server_pid()
        server = self.server(listen, node_address, cluster_name, slurm_conf)
        if pid is not None and self.server_listen(pid) != listen:
            _progress(f"server listens on {self.server_listen(pid)}, wanted {listen}; restarting it")
            stop_pid(pid, "slurmlink serve", 10, _progress)
            pid = None
        elif pid is not None and supervise.cmdline(pid)[1:] != server.argv()[1:]:
            _progress("server runs with other options (the cluster's address changed?); restarting it")
            stop_pid(pid, "slurmlink serve", 10, _progress)
            pid = None
        if pid is None:
            self._check_listen(listen)
            if "--extra-listen" in server.extra_args:
                self._check_listen(server.extra_args[server.extra_args.index("--extra-listen") + 1])
            _progress(f"starting slurmlink serve on {listen} (log {self.server_log})")
            try:
                server.start(timeout)  # stops it again if it does not become ready
            except ServeError as exc:
                raise QuickstartError(str(exc)) from None
            return server.url, server
        _progress(f"slurmlink serve already running (pid {pid})")

        def check() -> None:
            if self.server_pid() is None:
                raise QuickstartError(f"slurmlink serve (pid {pid}) exited:\n{self._log_tail()}")

        try:
            supervise.wait_until(server.ready, timeout, "/readyz", check)
        except supervise.WaitTimeout:
            raise QuickstartError(
                f"slurmlink serve (pid {pid}) did not answer /readyz within {timeout:g} s:\n"
                f"{self._log_tail()}"
            ) from None
        return server.url, None

    @staticmethod
    def _check_listen(listen: str) -> None:
        """Fail before starting anything if the address is taken (the server would only log it)."""
        host, port = _split_listen(listen)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise QuickstartError(
                    f"cannot listen on {listen}: {exc.strerror}; pick another address with --listen"
                ) from exc

    def stop_server(self, timeout: float = 10) -> None:
        pid = self.server_pid()
        if pid is not None:
            stop_pid(pid, "slurmlink serve", timeout, _progress)
        with contextlib.suppress(FileNotFoundError):
            self.server_pid_file.unlink()

    # ------------------------------------------------------------- credentials

    def ensure_plugin_kubeconfig(self) -> Path:
        """The plugin's credentials, reissued only if missing or no longer right for this server."""
        from slurmlink.auth.issue import IssueError, issue_kubeconfig, kubeconfig_is_current
        from slurmlink.auth.kubeconfig import write_kubeconfig

        target = self.plugin_kubeconfig
        args = (self.server_dir, PLUGIN_USER, PLUGIN_ROLE, PLUGIN_NAMESPACE)
        if kubeconfig_is_current(target, *args):
            return target
        try:
            config = issue_kubeconfig(*args)
        except IssueError as exc:
            raise QuickstartError(str(exc)) from exc
        write_kubeconfig(target, config)
        _progress(f"issued {target} (user {PLUGIN_USER}, role {PLUGIN_ROLE}, namespace {PLUGIN_NAMESPACE})")
        return target

    def ensure_agent_kubeconfig(self, target: Path, node: str, server_url: str) -> Path:
        """The node agent's credentials (user system:node:NODE), naming the API where nodes reach it."""
        from slurmlink.auth.issue import IssueError, issue_kubeconfig, kubeconfig_is_current
        from slurmlink.auth.kubeconfig import write_kubeconfig
        from slurmlink.auth.roles import node_user

        args = (self.server_dir, node_user(node), "node-agent", "default")
        if kubeconfig_is_current(target, *args, server_url=server_url):
            return target
        try:
            config = issue_kubeconfig(*args, server_url=server_url)
        except IssueError as exc:
            raise QuickstartError(str(exc)) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        write_kubeconfig(target, config)
        return target

    # ----------------------------------------------------------------- storage

    def storage_size(self, size: str | None) -> str:
        return size or self._saved("storage_size") or DEFAULT_STORAGE_SIZE

    def ensure_storage(
        self,
        cluster: DevCluster,
        listen: str,
        size: str,
        capacity: str | None,
        timeout: float,
        started: list[str],
    ) -> None:
        """One agent per storage node (inside it), each Storage Ready, the default pools over them.

        Appends the nodes whose agent this call started to ``started`` (a failed ``up`` stops them).
        """
        import asyncio

        from slurmlink.agent.devcluster import setup_storage_api
        from slurmlink.resources.sizes import SizeError, parse_size

        try:
            size_bytes = parse_size(size)
            capacity_bytes = parse_size(capacity) if capacity is not None else None
        except SizeError as exc:
            raise QuickstartError(f"storage size: {exc}") from None
        agents = self.agents(cluster)
        nodes = cluster.storage_nodes
        computes = cluster.compute_nodes
        wanted = {node.name for node in [*nodes, *computes]}
        for name in agents.known_nodes():
            if name not in wanted:  # the node is gone (and the agent with it): forget it, free its loop
                agents.stop(name)
                from slurmlink.agent.device import DeviceError, release_loop_file

                with contextlib.suppress(DeviceError):
                    release_loop_file(agents.files(name).loop_file, _progress)
        url = self.node_url(listen, cluster.controller_address)
        for node in nodes:
            files = agents.files(node.name)
            self.ensure_agent_kubeconfig(files.kubeconfig, node.name, url)
            argv = agents.argv(node.name, size=size_bytes, capacity=capacity_bytes)
            _pid, was_started = agents.ensure(node, argv)
            if was_started:
                started.append(node.name)
        # One compute-mode agent per compute node: it mounts the node's burst buffers (ClientMounts).
        for node in computes:
            files = agents.files(node.name)
            self.ensure_agent_kubeconfig(files.kubeconfig, node.name, url)
            _pid, was_started = agents.ensure(node, agents.compute_argv(node.name))
            if was_started:
                started.append(node.name)
        if not nodes:
            return
        names = [node.name for node in nodes]
        try:
            asyncio.run(setup_storage_api(self.admin_kubeconfig, agents, names, timeout))
        except StorageSetupError as exc:
            raise QuickstartError(str(exc)) from None
        for node in computes:
            if agents.pid(node.name) is None:
                raise QuickstartError(
                    f"the compute agent on {node.name} exited:\n{agents.log_tail(node.name)}"
                )
        _progress(f"storage nodes {', '.join(names)} Ready; pools {', '.join(n for n, _ in DEFAULT_POOLS)}")

    # -------------------------------------------------------------- lifecycle

    def up(
        self,
        listen: str | None,
        timeout: float,
        *,
        ctld_port: int | None = None,
        slurmd_port: int | None = None,
        compute_nodes: int | None = None,
        storage_nodes: int | None = None,
        storage_size: str | None = None,
        storage_capacity: str | None = None,
        burst_buffer_plugin: str | None = None,
        accounting: bool | None = None,
        dbd_port: int | None = None,
        accounting_enforce: str | None = None,
        bank: bool | None = None,
        cluster_name: str | None = None,
        partitions: tuple[PartitionSpec, ...] | None = None,
        memory_limits: bool | None = None,
    ) -> None:
        """Start (or refresh) everything. Accounting storage is on unless turned off, now or by the last
        ``up``: the quick start is where the bank's reconciler and ``sacct`` users try things."""
        if os.geteuid() != 0:
            raise QuickstartError("the quick start runs Slurm's daemons as root: run it as root (sudo)")
        listen = listen or self.saved_listen() or DEFAULT_LISTEN
        _split_listen(listen)
        size = self.storage_size(storage_size)
        capacity = storage_capacity or (None if storage_size else self._saved("storage_capacity"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # the job user must reach DIR/cluster
        plugin = burst_buffer_plugin or self._saved("burst_buffer_plugin") or "lua"
        accounting = self.saved_accounting() if accounting is None else accounting
        bank = self.saved_bank(accounting) if bank is None else bank
        self._save_settings(listen, size, capacity, plugin, accounting, bank)
        try:
            cluster = self.cluster(
                ctld_port,
                slurmd_port,
                compute_nodes=compute_nodes,
                storage_nodes=storage_nodes,
                accounting=accounting,
                dbd_port=dbd_port,
                accounting_enforce=accounting_enforce,
                cluster_name=cluster_name,
                partitions=partitions,
                memory_limits=memory_limits,
            )
        except DevClusterError as exc:
            raise QuickstartError(str(exc)) from exc
        # The nodes reach the server at the bridge's address, which exists once the network does.
        try:
            created_network = cluster.ensure_network()
        except DevClusterError as exc:
            raise QuickstartError(str(exc)) from exc
        started_server: ServeProcess | None = None
        started_agents: list[str] = []
        try:
            url, started_server = self.ensure_server(
                listen, timeout, cluster.controller_address, cluster.cluster_name, cluster.slurm_conf
            )
            node_url = self.node_url(listen, cluster.controller_address)
            _progress(f"API server ready at {url} (nodes reach it at {node_url})")
            kubeconfig = self.ensure_plugin_kubeconfig()
            # On failure the cluster stops the daemons it started itself.
            gateway_args: tuple[str, ...] = ()
            hooks = None
            if bank:
                hooks = bank_hook_files(cluster.etc_dir, cluster.gateway_socket)
                gateway_args = ("--bank", "--bank-spool", str(self.dir / "bank-spool"))
            cluster.up(
                wait_timeout=timeout,
                gateway=GatewaySetup(kubeconfig=kubeconfig, plugin=plugin, extra_args=gateway_args),
                extra_lines=hooks.lines if hooks else (),
                extra_files=hooks.files if hooks else None,
                partition_default_time=hooks.default_time if hooks else None,
            )
            self.ensure_storage(cluster, listen, size, capacity, timeout, started_agents)
            if bank:
                self.ensure_bank(cluster)
        except BaseException as exc:
            agents = self.agents(cluster)
            for node in started_agents:
                agents.stop(node)
            if started_server is not None:
                _progress(f"up failed; stopping the slurmlink serve it started (pid {started_server.pid})")
                started_server.stop()
            if created_network:
                _progress("up failed; removing the cluster network it made")
                with contextlib.suppress(DevClusterError):
                    cluster.down(timeout=10)
                agents.release()
            if isinstance(exc, DevClusterError):
                raise QuickstartError(str(exc)) from exc
            raise
        job = cluster.jobs_dir / EXAMPLE_JOB_NAME
        if not job.exists() or job.read_text() != example_job(plugin):
            job.write_text(example_job(plugin))
        job.chmod(0o644)

    def ensure_bank(self, cluster: DevCluster) -> None:
        """The quick start's rate card, and its account with a first grant (once)."""
        import asyncio

        from slurmlink.bank.bootstrap import ensure_bank
        from slurmlink.client.http import HttpClient

        async def run() -> dict[str, Any]:
            client = HttpClient.from_kubeconfig(self.admin_kubeconfig)
            try:
                return await ensure_bank(
                    client,
                    partitions={
                        spec.name: spec.effective_default_time(BANK_DEFAULT_TIME) or BANK_DEFAULT_TIME
                        for spec in cluster.partitions
                    },
                    default_partition=cluster.default_partition,
                    cpus_per_node=os.cpu_count() or 1,
                    account=DEFAULT_ACCOUNT,
                    users=[cluster.job_user],
                )
            finally:
                await client.aclose()

        try:
            balance = asyncio.run(run())
        except ApiError as exc:
            raise QuickstartError(f"setting up the bank failed: {exc.message}") from exc
        _progress(f"bank: account {DEFAULT_ACCOUNT} has {balance['available']} SU available")

    def down(self, purge: bool, timeout: float) -> None:
        cluster = self.cluster()
        agents = self.agents(cluster)
        agents.stop_all(timeout)
        try:
            cluster.down(purge=purge and cluster.state_dir.exists(), timeout=timeout)
        except DevClusterError as exc:
            raise QuickstartError(str(exc)) from exc
        agents.release()  # the nodes, and the pools they had mounted, are gone: free the loop devices
        self.stop_server(timeout)
        if purge and self.dir.exists():
            if not (self.dir / SETTINGS_FILE).exists():
                raise QuickstartError(f"refusing to purge {self.dir}: it is not a quick start directory")
            _progress(f"purging {self.dir}")
            shutil.rmtree(self.dir)

    def instructions(self) -> str:
        """What to do next: submit the example job, watch its Workflow, ask Slurm about it."""
        cluster = self.cluster()
        job = cluster.jobs_dir / EXAMPLE_JOB_NAME
        conf = shlex.quote(str(cluster.slurm_conf))
        jobs = shlex.quote(str(cluster.jobs_dir))
        plugin = self._saved("burst_buffer_plugin")
        what = (
            "a DataWarp job (Slurm's burst_buffer/datawarp runs slurmlink dw-wlm-cli)"
            if plugin == "datawarp"
            else "the DWS install guide's test job"
        )
        script = "\n".join(f"      {line}" for line in example_job(plugin).splitlines())
        cluster_dir = shlex.quote(str(cluster.state_dir))
        controller = cluster.network.controller_address if cluster.network else "(no network yet)"
        dir_opt = "" if self.dir == DEFAULT_DIR else f" --state-dir {shlex.quote(str(self.dir))}"
        admin = shlex.quote(str(self.admin_kubeconfig))
        storage_nodes = cluster.node_names("storage")
        if storage_nodes:
            logs = self.agents(cluster).files("NODE").log_file
            pools = ", ".join(name for name, _ in DEFAULT_POOLS)
            storage = f"  storage      agents on {', '.join(storage_nodes)} (log {logs}); pools {pools}\n"
            storage_help = f"""
See the storage nodes and pools, drain and undrain a node:
    KUBECONFIG={admin} kubectl get storages -A
    KUBECONFIG={admin} kubectl get storagepools
    KUBECONFIG={admin} slurmlink storage list
    KUBECONFIG={admin} slurmlink storage drain {storage_nodes[0]} --reason maintenance
"""
        else:
            storage = storage_help = ""
        accounting = (
            f"  accounting   slurmdbd on port {cluster.dbd_port} (MariaDB in {cluster.mariadb.directory}); "
            f"jobs go to account '{DEFAULT_ACCOUNT}':\n"
            f"               SLURM_CONF={conf} sacct -X -o JobID,Account,State,Elapsed,AllocTRES\n"
            if cluster.accounting
            else ""
        )
        if cluster.memory_limits:
            accounting += (
                "  memory       enforced with cgroups: a job gets --mem (else "
                f"{DEF_MEM_PER_CPU} MiB per CPU) and ends OUT_OF_MEMORY over it\n"
            )
        return f"""\
slurmlink quick start is up ({self.dir}).
  API server   {self.server_url(self.saved_listen() or DEFAULT_LISTEN)}   log {self.server_log}
  Slurm        SLURM_CONF={cluster.slurm_conf}   job user {cluster.job_user}
  nodes        {", ".join(cluster.node_names())}   controller (as nodes see it) {controller}
               a shell on one: slurmlink dev-cluster exec --state-dir {cluster_dir} NODE -- bash
  gateway      {cluster.gateway_socket}   log {cluster.gateway_log}
{accounting}{storage}
Submit {what} ({job}):
{script}
  as the job user (root may not use burst buffers):
    runuser -u {cluster.job_user} -- env SLURM_CONF={conf} sbatch --chdir {jobs} \\
        {shlex.quote(str(job))}

Watch its Workflow (named bb<jobid>, namespace {PLUGIN_NAMESPACE}) go through the states:
    KUBECONFIG={shlex.quote(str(self.admin_kubeconfig))} kubectl get \\
        workflows.dataworkflowservices.github.io -A -w
  or: KUBECONFIG={shlex.quote(str(self.admin_kubeconfig))} slurmlink get workflows -A

Ask Slurm about it (<jobid> as printed by sbatch; the Workflow is deleted once the job is torn down, so
ask while it is pending or running, or add "sleep 60" to the script):
    SLURM_CONF={conf} scontrol show bbstat workflow <jobid> && echo
    SLURM_CONF={conf} scontrol show job <jobid>
{storage_help}
Run a Slurm job as an object, without sbatch (the job bridge; job directories in {self.jobs_dir}):
    slurmlink kubeconfig --state-dir {shlex.quote(str(self.server_dir))} --role user \
        --user {cluster.job_user} --out /tmp/{cluster.job_user}.kubeconfig
    export KUBECONFIG=/tmp/{cluster.job_user}.kubeconfig
    kubectl get partitions; kubectl get sj -o wide -w; slurmlink logs sj NAME

Status: slurmlink quickstart status{dir_opt}    Stop: slurmlink quickstart down{dir_opt} [--purge]"""


_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_DIR),
    show_default=True,
    envvar="SLURMLINK_QUICKSTART_DIR",
    show_envvar=True,
    help="Directory for everything: server state, plugin credentials, dev cluster, logs and pid files. "
    "It and its parents must be searchable by other users (the job user reads slurm.conf there).",
)


@click.group("quickstart")
def quickstart() -> None:
    """Run the whole system on this host: API server, Slurm with slurmlink's plugin, and its gateway.

    For trying slurmlink out and for demos; needs root (Slurm's daemons run as root) and installs Debian's
    Slurm packages when missing. Production installs use 'slurmlink serve' and 'slurmlink slurm install'.
    """


@quickstart.command()
@_state_dir_option
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help=f"Where the API server listens (default: the address of the last 'up', else {DEFAULT_LISTEN}).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120,
    show_default=True,
    help="Seconds to wait for each part (server, gateway, Slurm node) to become ready.",
)
@click.option(
    "--ctld-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"slurmctld port of the dev cluster (default: the last 'up's, else {DEFAULT_CTLD_PORT}).",
)
@click.option(
    "--slurmd-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"slurmd port of the dev cluster (default: the last 'up's, else {DEFAULT_SLURMD_PORT}).",
)
@node_count_options
@partition_options
@click.option(
    "--storage-size",
    metavar="SIZE",
    default=None,
    help=f"Size of each storage node's loop file (sparse; default: the last 'up's, else "
    f"{DEFAULT_STORAGE_SIZE}). An existing loop file keeps its size.",
)
@click.option(
    "--storage-capacity",
    metavar="SIZE",
    default=None,
    help="Capacity each storage agent reports instead of its file system's size (may exceed it, for "
    "dir/raw pools in tests of large requests).",
)
@click.option(
    "--burst-buffer-plugin",
    type=click.Choice(["lua", "datawarp"]),
    default=None,
    help="Slurm's plugin in front of slurmlink: 'lua' (burst_buffer.lua, #DW jobs) or 'datawarp' "
    "(Slurm's burst_buffer/datawarp running 'slurmlink dw-wlm-cli': #DW jobdw and #BB "
    "create_persistent/destroy_persistent; DefaultPool=gluster). Default: the last 'up's, else lua.",
)
@accounting_options(default="on")
@click.option(
    "--bank/--no-bank",
    default=None,
    help="Run the bank's Slurm hooks (job_submit.lua, PrologSlurmctld, EpilogSlurmctld): jobs are "
    "checked against their account's service units at sbatch, held at start and charged at the end. "
    "Sets up a rate card (1 SU per CPU-hour) and account 'default' with 1000 SU. Default: the last "
    "'up's, else on with --accounting.",
)
@memory_limits_option
def up(
    state_dir: Path,
    listen: str | None,
    timeout: float,
    ctld_port: int | None,
    slurmd_port: int | None,
    compute_nodes: int | None,
    storage_nodes: int | None,
    cluster_name: str | None,
    partitions: tuple[PartitionSpec, ...] | None,
    storage_size: str | None,
    storage_capacity: str | None,
    burst_buffer_plugin: str | None,
    accounting: bool | None,
    dbd_port: int | None,
    accounting_enforce: str | None,
    bank: bool | None,
    memory_limits: bool | None,
) -> None:
    """Start (or refresh) everything and print how to submit a burst buffer job.

    Makes the dev cluster's network and nodes, starts 'slurmlink serve' in the background (on --listen, and
    on the cluster bridge's address where the nodes reach it), issues the plugin's kubeconfig (user
    slurm-dws, role workload-manager, namespace slurm), brings up Slurm in STATE_DIR/cluster with
    slurmlink's burst_buffer.lua and the gateway, starts a storage agent inside each storage node (each on
    a sparse loop file under STATE_DIR/storage, with its own node-agent kubeconfig), a compute agent inside
    each compute node (it mounts the nodes' burst buffers) and creates the default storage pools over them.
    Slurm's accounting storage (slurmdbd on a private MariaDB in STATE_DIR/cluster/mariadb) runs too, so
    sacct and sacctmgr work, unless --no-accounting. --cluster-name and --partition shape Slurm as in
    'slurmlink dev-cluster up'; with the bank, a partition without DefaultTime gets an hour, and the
    quick start's rate card prices every partition. --memory-limits enforces jobs' memory with cgroups as
    in 'slurmlink dev-cluster up': a job over its --mem (default 256 MiB per CPU) ends OUT_OF_MEMORY.
    Running it again keeps what is running and restarts only what changed.
    """
    check_accounting_options(accounting, accounting_enforce)
    qs = Quickstart(state_dir)
    try:
        qs.up(
            listen,
            timeout,
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            compute_nodes=compute_nodes,
            storage_nodes=storage_nodes,
            storage_size=storage_size,
            storage_capacity=storage_capacity,
            burst_buffer_plugin=burst_buffer_plugin,
            accounting=accounting,
            dbd_port=dbd_port,
            accounting_enforce=accounting_enforce,
            bank=bank,
            cluster_name=cluster_name,
            partitions=partitions,
            memory_limits=memory_limits,
        )
    except QuickstartError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(qs.instructions())


@quickstart.command()
@_state_dir_option
@click.option("--purge", is_flag=True, help="Also delete STATE_DIR (server database, CA, Slurm state, logs).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=10,
    show_default=True,
    help="Seconds to wait after SIGTERM before sending SIGKILL.",
)
def down(state_dir: Path, purge: bool, timeout: float) -> None:
    """Stop the storage agents, the dev cluster (Slurm, gateway, slurmdbd, MariaDB, munge, nodes), then the
    API server; by pid file only. The storage nodes' loop devices are detached (their files stay unless
    --purge)."""
    qs = Quickstart(state_dir)
    try:
        qs.down(purge, timeout)
    except QuickstartError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("Quick start is down." + (" State directory deleted." if purge else ""))


@quickstart.command()
@_state_dir_option
def status(state_dir: Path) -> None:
    """Show what runs; exit status 1 unless everything does."""
    from rich.console import Console
    from rich.table import Table

    qs = Quickstart(state_dir)
    listen = qs.saved_listen() or DEFAULT_LISTEN
    table = Table(title=f"slurmlink quick start ({qs.dir})")
    table.add_column("component")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    pid = qs.server_pid()
    ready = pid is not None and qs.server_ready(listen)
    if pid is None:
        server_state = "[red]stopped[/]"
    else:
        server_state = f"[green]running[/] (pid {pid})" + ("" if ready else " [yellow]not ready[/]")
    table.add_row("API server", server_state, f"{qs.server_url(listen)}, log {qs.server_log}")
    cluster = qs.cluster()
    st = cluster.status()
    for name, alive in [
        ("munged", st.munged),
        ("gateway", st.gateway),
        ("slurmctld", st.slurmctld),
    ]:
        state = f"[green]running[/] (pid {st.pids.get(name)})" if alive else "[red]stopped[/]"
        if name == "gateway" and alive and not gateway_healthy(cluster.gateway_socket):
            state += " [yellow]not healthy[/]"
        detail = {
            "gateway": f"socket {cluster.gateway_socket}, log {cluster.gateway_log}",
            "slurmctld": f"port {st.ctld_port}, SLURM_CONF={cluster.slurm_conf}",
            "munged": f"socket {cluster.munge_socket}",
        }[name]
        table.add_row(name, state, detail)
    for row in accounting_rows(cluster, st):
        table.add_row(*row)
    table.add_row(*memory_limits_row(st))
    for row in node_rows(st):
        table.add_row(*row)
    agents_ok = True
    storage_nodes = cluster.node_names("storage")
    if storage_nodes:
        import asyncio

        from slurmlink.agent.devcluster import storage_objects

        objects = asyncio.run(storage_objects(qs.admin_kubeconfig)) if ready else {}
        agents = qs.agents(cluster)
        for node in storage_nodes:
            agent_pid = agents.pid(node)
            agents_ok = agents_ok and agent_pid is not None
            state = f"[green]running[/] (pid {agent_pid})" if agent_pid is not None else "[red]stopped[/]"
            status = (objects.get(node) or {}).get("status") or {}
            spec = (objects.get(node) or {}).get("spec") or {}
            seen = (
                f"Storage {status.get('status') or '?'}, state {spec.get('state') or '?'}, "
                f"capacity {status.get('capacity', '?')} bytes"
                if node in objects
                else "no Storage object"
            )
            table.add_row(f"agent {node}", state, f"{seen}; log {agents.files(node).log_file}")
    compute_nodes = cluster.node_names("compute")
    if storage_nodes and compute_nodes:
        agents = qs.agents(cluster)
        for node in compute_nodes:
            agent_pid = agents.pid(node)
            agents_ok = agents_ok and agent_pid is not None
            state = f"[green]running[/] (pid {agent_pid})" if agent_pid is not None else "[red]stopped[/]"
            detail = f"compute (ClientMounts); log {agents.files(node).log_file}"
            table.add_row(f"agent {node}", state, detail)
    table.add_row(*partition_row(cluster))
    table.add_row("job user", "", cluster.job_user)
    Console().print(table)
    if not (ready and st.running and st.gateway and agents_ok):
        raise SystemExit(1)
