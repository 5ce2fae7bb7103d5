"""Server configuration: defaults, overridden by a TOML file, environment variables and flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slurmlink.auth import delegation


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slurmlink"


@dataclass
class ServerConfig:
    """Everything ``slurmlink serve`` needs. See README "Configuration"."""

    state_dir: Path = field(default_factory=default_state_dir)
    listen: str = "127.0.0.1:8443"
    #: Further HOST:PORT addresses to serve on (e.g. the dev cluster's bridge, where its nodes' agents
    #: reach the server); their hosts go into the server certificate. Clients are told ``listen``'s URL.
    extra_listen: list[str] = field(default_factory=list)
    store: str = ""  # SQLAlchemy URL; empty means SQLite in the state directory
    hosts: list[str] = field(default_factory=list)  # extra names/IPs for the server certificate
    namespaces: list[str] = field(default_factory=lambda: ["default", "dws-system", "slurm"])
    system_namespace: str = "dws-system"
    test_driver: bool = True
    #: Install the burst-buffer driver's DWDirectiveRule (``#DW jobdw`` and the persistent-buffer commands).
    burst_buffer_driver: bool = True
    controllers: bool = True
    compaction_retain: int = 50_000
    compaction_interval: float = 60.0
    log_level: str = "info"
    log_format: str = "json"
    insecure_http: bool = False  # development only: plain HTTP, everyone is admin
    nice: int = 0  # added to the CPU nice value (slurmlink.cpu_priority), e.g. next to slurmctld
    #: Seconds without a heartbeat (the agent's node Lease renewed) before a node's Storage is Offline.
    node_heartbeat_timeout: float = 40.0
    #: The Slurm cluster (slurm.conf ClusterName) whose accounts the bank keeps.
    cluster_name: str = "cluster"
    #: Run the job bridge (SlurmJobs become Slurm jobs; Partitions are published) against this cluster.
    bridge: bool = False
    #: The cluster's slurm.conf for the bridge's Slurm commands (default: $SLURM_CONF, then Slurm's).
    slurm_conf: str = ""
    #: Where job directories go (one per SlurmJob, on a file system the compute nodes share);
    #: default STATE_DIR/bridge/jobs.
    bridge_root: str = ""
    #: Seconds between two reads of Slurm's jobs (one scontrol call per read, whatever the job count).
    bridge_interval: float = 2.0
    #: Seconds between two partition refreshes.
    bridge_partition_interval: float = 60.0
    #: The admin's partition overrides (TOML, docs/job-bridge.md "Admin overrides").
    partition_config: str = ""
    #: Ask sacct about jobs slurmctld has forgotten (on when slurm.conf names an accounting storage).
    bridge_accounting: bool | None = None
    #: The largest upload the bridge takes, in bytes.
    bridge_max_upload: int = 10 * 1024**3
    #: Services that submit SlurmJobs on named users' behalf: ``{portal = ["alice", "bob"]}``
    #: (``auth.delegation``); none by default.
    bridge_delegates: dict[str, list[str]] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def extra_hosts(self) -> list[str]:
        """The hosts of ``extra_listen``."""
        return [split_listen(address)[0] for address in self.extra_listen]

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.state_dir / 'slurmlink.db'}"

    @property
    def client_host(self) -> str:
        """Address clients use: a wildcard listen address becomes loopback."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def url(self) -> str:
        scheme = "http" if self.insecure_http else "https"
        host = f"[{self.client_host}]" if ":" in self.client_host else self.client_host
        return f"{scheme}://{host}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"


def split_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) as host and port; ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, e.g. 127.0.0.1:8443, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_file(path: Path | None) -> dict[str, Any]:
    """The ``[serve]`` table of a TOML config file (missing file -> empty)."""
    if path is None or not path.exists():
        return {}
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    section = data.get("serve", {})
    known = {f.name for f in fields(ServerConfig)}
    unknown = set(section) - known
    if unknown:
        raise ValueError(f"{path}: unknown settings in [serve]: {', '.join(sorted(unknown))}")
    return dict(section)


def build(file_values: dict[str, Any], overrides: dict[str, Any]) -> ServerConfig:
    """Defaults < file < overrides (flags and environment, already merged by the CLI)."""
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    if "state_dir" in values:
        values["state_dir"] = Path(values["state_dir"]).expanduser()
    config = ServerConfig(**values)
    for address in config.extra_listen:
        split_listen(address)
    delegation.parse(config.bridge_delegates)  # a bad table is refused at start, with the key
    if config.bridge_interval <= 0 or config.bridge_partition_interval <= 0:
        raise ValueError("bridge_interval and bridge_partition_interval must be positive")
    if config.node_heartbeat_timeout <= 0:
        raise ValueError(f"node_heartbeat_timeout must be positive, got {config.node_heartbeat_timeout}")
    return config
