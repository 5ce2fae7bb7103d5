"""A local single-node Slurm ("dev cluster") for tests and the quick start.

Runs Debian's Slurm 22.05 daemons (munged, ``slurmctld -D``, ``slurmd -D -N localhost``) as root with every
file inside one state directory: its own config, munge key and socket, state, spool, logs and pid files. The
system's ``/etc/slurm`` and munge are never touched, so a dev cluster can live next to a real installation as
long as the ports differ. Jobs that use burst buffers must be submitted by an unprivileged user (the lua
plugin refuses root), hence :meth:`DevCluster.ensure_job_user` and :meth:`DevCluster.run_as_job_user`.

With a :class:`GatewaySetup` the cluster runs slurmlink's real burst buffer plugin: ``burst_buffer.lua`` and
the plugin kubeconfig are installed into ``state_dir/etc`` (:func:`slurmlink.slurm.install.install_plugin`)
and a fourth daemon, ``slurmlink slurm gateway``, is started before slurmctld, because slurmctld calls
``slurm_bb_pools`` through it as soon as it starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from slurmlink import supervise
from slurmlink.supervise import running_pid as running_pid
from slurmlink.supervise import spawn_detached as spawn_detached
from slurmlink.supervise import stop_pid as stop_pid

#: Under /var/tmp, not the invoking user's home: the unprivileged job user must reach slurm.conf, the
#: munge socket and the spool directory, and root's home is private.
DEFAULT_STATE_DIR = Path("/var/tmp/slurmlink/dev-cluster")
DEFAULT_CTLD_PORT = 6917
DEFAULT_SLURMD_PORT = 6918
DEFAULT_JOB_USER = "slurmlink-job"
DEFAULT_JOB_UID = 23001
DEFAULT_CLUSTER_NAME = "slurmlink-dev"

#: Debian packages that provide the daemons, clients, munge and the lua plugins; slurmlink's
#: burst_buffer.lua talks to its gateway with LuaSocket, loaded inside slurmctld.
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurm-wlm-basic-plugins", "lua-socket")
NODE_NAME = "localhost"
PARTITION = "debug"
SETTINGS_FILE = "devcluster.json"
KUBECONFIG_REF_FILE = "kubeconfig.path"
#: What the running gateway was started with (argv, kubeconfig hash), to restart it when that changes.
GATEWAY_STATE_FILE = "gateway.json"
GATEWAY_SOCKET_NAME = "slurm-bb.sock"
PLUGIN_KUBECONFIG_NAME = "slurm-dws.kubeconfig"

# Keys whose change a running slurmctld/slurmd cannot pick up with "scontrol reconfigure".
_RESTART_KEYS = frozenset(
    {
        "clustername",
        "slurmctldport",
        "slurmdport",
        "authinfo",
        "authtype",
        "statesavelocation",
        "burstbuffertype",
    }
)
_POLL_INTERVAL = 0.1
_READY_STATES = frozenset({"idle", "mixed", "allocated", "completing"})

LogFn = Callable[[str], None]
_T = TypeVar("_T")


class DevClusterError(RuntimeError):
    """The dev cluster could not be set up, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class BurstBufferSetup:
    """A burst_buffer/lua plugin: the ``burst_buffer.lua`` and ``burst_buffer.conf`` texts.

    Both are written next to slurm.conf because the plugin finds them with ``get_extra_conf_path()``.
    """

    lua_source: str
    conf_text: str


_PLACEHOLDER_LUA = """\
-- Placeholder burst_buffer.lua written by "slurmlink dev-cluster up": every callback succeeds and does
-- nothing, so #DW jobs run through the burst_buffer/lua plugin until slurmlink's own plugin is installed.
local function ok() return slurm.SUCCESS end
slurm_bb_job_process = ok
slurm_bb_setup = ok
slurm_bb_data_in = ok
slurm_bb_test_data_in = ok
slurm_bb_real_size = ok
slurm_bb_paths = ok
slurm_bb_pre_run = ok
slurm_bb_post_run = ok
slurm_bb_data_out = ok
slurm_bb_test_data_out = ok
slurm_bb_job_teardown = ok
function slurm_bb_get_status(...) return slurm.SUCCESS, "slurmlink dev-cluster placeholder burst buffer" end
"""
_NO_POOLS_LUA = "function slurm_bb_pools() return slurm.SUCCESS end\n"

_DEFAULT_BB_CONF = """\
# Jobs request burst buffers with "#DW ..." lines. Short timeouts keep a hung callback from stalling tests.
Directive=DW
StageInTimeout=30
StageOutTimeout=30
OtherTimeout=30
# Without it a failed stage-out leaves the job in STAGE_OUT forever.
Flags=TeardownFailure
"""


@dataclass(frozen=True)
class GatewaySetup:
    """slurmlink's real plugin: install it with this kubeconfig and run ``slurmlink slurm gateway``.

    ``extra_args`` are appended to the gateway's command line (e.g. ``("--transient-grace", "5")``);
    ``slurm_api`` None means: detect it with ``slurmctld -V``.
    """

    kubeconfig: Path
    extra_args: tuple[str, ...] = ()
    slurm_api: str | None = None


def placeholder_burst_buffer(pool_capacity: int | None = None) -> BurstBufferSetup:
    """A do-nothing burst_buffer/lua plugin, so ``#DW`` jobs work before the real plugin is installed.

    With ``pool_capacity`` it offers one pool, ``testpool``: jobs that ask for ``capacity=N pool=testpool``
    then start right after stage-in instead of waiting for the next scheduler pass (tests use that).
    """
    pools = _NO_POOLS_LUA
    if pool_capacity is not None:
        listing = f'{{"pools":[{{"id":"testpool","quantity":{int(pool_capacity)},"granularity":1}}]}}'
        pools = f"function slurm_bb_pools() return slurm.SUCCESS, '{listing}' end\n"
    return BurstBufferSetup(lua_source=_PLACEHOLDER_LUA + pools, conf_text=_DEFAULT_BB_CONF)


@dataclass(frozen=True)
class DevClusterStatus:
    """What is running, so callers (CLI, tests) need not probe pid files themselves."""

    state_dir: Path
    ctld_port: int
    slurmd_port: int
    munged: bool
    slurmctld: bool
    slurmd: bool
    node_state: str | None
    pids: dict[str, int | None] = field(default_factory=dict)
    #: The gateway daemon is alive.
    gateway: bool = False
    #: The last ``up`` installed slurmlink's plugin, so the gateway should be running.
    gateway_enabled: bool = False

    @property
    def running(self) -> bool:
        """All daemons are alive (the node may still be coming up); the gateway only if it is enabled."""
        return self.munged and self.slurmctld and self.slurmd and (self.gateway or not self.gateway_enabled)


@dataclass(frozen=True)
class _Daemon:
    name: str
    pid_file: Path
    log_file: Path
    argv: tuple[str, ...]
    #: For a Python daemon (the gateway): the argv after the interpreter that names the program. Its
    #: ``--socket`` value makes the command line unique to this cluster.
    python_prefix: tuple[str, ...] = ()

    def matches(self, argv: Sequence[str]) -> bool:
        """Whether a process with command line ``argv`` is this daemon (not a process that reused its pid)."""
        if not argv:
            return False
        if self.python_prefix:
            args = list(argv)
            return (
                Path(args[0]).name.startswith("python")
                and tuple(args[1 : 1 + len(self.python_prefix)]) == self.python_prefix
                and _option_value(args, "--socket") == _option_value(list(self.argv), "--socket")
            )
        # Our Slurm daemons carry this cluster's paths on their command line; a reused pid would not.
        return Path(argv[0]).name == self.argv[0] and self.argv[-1] in argv


def _option_value(argv: list[str], option: str) -> str | None:
    """The word after ``option`` in ``argv`` (None if absent)."""
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(option) + 1]
    return None


def unix_http_get(socket_path: Path, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """``GET path`` as HTTP/1.0 over a Unix socket: ``(status, body)``. Raises OSError/ValueError.

    Just enough HTTP for the gateway's health check, without pulling an HTTP client into the dev cluster.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: slurmlink\r\n\r\n".encode("ascii"))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line!r}")
    return int(parts[1]), body.decode("utf-8", errors="replace")


def gateway_healthy(socket_path: Path) -> bool:
    """The gateway at ``socket_path`` answers ``GET /v1/healthz`` with 200 (it has synced with the API)."""
    try:
        status, _ = unix_http_get(socket_path, "/v1/healthz")
    except (OSError, ValueError):
        return False
    return status == 200


def _stderr_log(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


def _wait_until(
    probe: Callable[[], _T | None], timeout: float, what: str, check: Callable[[], None] | None = None
) -> _T:
    """:func:`slurmlink.supervise.wait_until`, failing with :class:`DevClusterError`."""
    try:
        return supervise.wait_until(probe, timeout, what, check)
    except supervise.SupervisionError as exc:
        raise DevClusterError(str(exc)) from None


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise DevClusterError("MemTotal missing from /proc/meminfo")


def _conf_key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip().lower()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_pair() -> tuple[int, int]:
    """Two currently free TCP ports, for test clusters that must not clash with anything else."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        first, second = (sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    return first, second


def parse_scontrol_record(text: str) -> dict[str, str]:
    """Parse ``scontrol show job|node`` output into ``{Key: value}``.

    Values may contain spaces (``BurstBuffer=#DW jobdw capacity=1``, ``Reason=...``); a new field starts only
    at a space followed by a capitalised ``Key=``, which is how scontrol spells its own keys.
    """
    record: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        starts = [m.start(1) for m in re.finditer(r"(?:^|\s)([A-Z][A-Za-z0-9_:/]*=)", line)]
        for index, start in enumerate(starts):
            end = starts[index + 1] if index + 1 < len(starts) else len(line)
            key, _, value = line[start:end].partition("=")
            record.setdefault(key, value.strip())
    return record


class DevCluster:
    """One single-node Slurm cluster living entirely in ``state_dir``.

    Settings given at ``up`` are saved in ``state_dir/devcluster.json`` so that later ``status``/``down``/
    ``env`` calls (other processes, the CLI) find the same ports via :meth:`from_state_dir`.
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
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.ctld_port = ctld_port
        self.slurmd_port = slurmd_port
        self.job_user = job_user
        self.job_uid = job_uid
        self.cluster_name = cluster_name.lower()
        self.log: LogFn = log or _stderr_log
        #: Pids this object started, by daemon name: alive even while the daemon rewrites its pid file.
        self._spawned: dict[str, int] = {}
        #: Every daemon this object started, in order, so a failed ``up`` can stop what it started.
        self._start_order: list[tuple[_Daemon, int]] = []

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
        known = {"ctld_port", "slurmd_port", "job_user", "job_uid", "cluster_name"}
        settings = {key: value for key, value in settings.items() if key in known}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(state_dir, log=log, **settings)

    # ------------------------------------------------------------------ paths

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

    @property
    def slurmd_log(self) -> Path:
        return self.log_dir / "slurmd.log"

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

    def _gateway_daemon(self, extra_args: Sequence[str] = ()) -> _Daemon:
        prefix = ("-m", "slurmlink.cli.main", "slurm", "gateway")
        return _Daemon(
            "gateway",
            self.run_dir / "gateway.pid",
            self.gateway_log,
            (
                sys.executable,
                *prefix,
                "--kubeconfig",
                str(self.plugin_kubeconfig),
                "--socket",
                str(self.gateway_socket),
                "--slurm-conf",
                str(self.slurm_conf),
                *extra_args,
            ),
            python_prefix=prefix,
        )

    def _daemons(self) -> list[_Daemon]:
        conf = str(self.slurm_conf)
        return [
            _Daemon(
                "munged",
                self.run_dir / "munged.pid",
                self.log_dir / "munged.stdout",
                (
                    "munged",
                    "--foreground",
                    f"--key-file={self.munge_key}",
                    f"--socket={self.munge_socket}",
                    f"--pid-file={self.run_dir / 'munged.pid'}",
                    f"--log-file={self.log_dir / 'munged.log'}",
                    f"--seed-file={self.munge_dir / 'munged.seed'}",
                ),
            ),
            _Daemon(
                "slurmctld",
                self.run_dir / "slurmctld.pid",
                self.log_dir / "slurmctld.stdout",
                ("slurmctld", "-D", "-f", conf),
            ),
            _Daemon(
                "slurmd",
                self.run_dir / "slurmd.pid",
                self.log_dir / "slurmd.stdout",
                ("slurmd", "-D", "-N", NODE_NAME, "-f", conf),
            ),
            self._gateway_daemon(),
        ]

    def _daemon(self, name: str) -> _Daemon:
        return next(d for d in self._daemons() if d.name == name)

    # ------------------------------------------------------------- packages

    @staticmethod
    def missing_packages() -> list[str]:
        """Packages of :data:`PACKAGES` that dpkg does not report as installed."""
        missing = []
        for package in PACKAGES:
            probe = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
            )
            if probe.returncode != 0 or "install ok installed" not in probe.stdout:
                missing.append(package)
        return missing

    def ensure_packages(self) -> None:
        """Install the Debian Slurm + munge packages if any is missing (needs root and apt)."""
        if shutil.which("dpkg-query") is None:
            raise DevClusterError("dpkg-query not found: the dev cluster needs Debian/Ubuntu Slurm packages")
        missing = self.missing_packages()
        if not missing:
            return
        if os.geteuid() != 0:
            raise DevClusterError(
                f"missing packages {' '.join(missing)}; run as root or install them with "
                f"'apt-get install --no-install-recommends {' '.join(missing)}'"
            )
        self.log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # The distro's postinst may try to start its own services (using /etc/slurm); without systemd that
        # fails harmlessly and they never touch this cluster's files.
        self._stream(["apt-get", "update"], env)
        self._stream(["apt-get", "install", "-y", "--no-install-recommends", *missing], env)
        still_missing = self.missing_packages()
        if still_missing:
            raise DevClusterError(f"apt-get did not install {' '.join(still_missing)}")

    def _stream(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Run a command, forwarding its output line by line as progress."""
        with subprocess.Popen(
            list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip():
                    self.log(f"  {argv[0]}: {line.rstrip()}")
            rc = proc.wait()
        if rc != 0:
            raise DevClusterError(f"{' '.join(argv)} failed with exit code {rc}")

    # -------------------------------------------------------------- job user

    def ensure_job_user(self) -> pwd.struct_passwd:
        """Create the unprivileged job user (root may not use burst buffers) with a home, if missing."""
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(self.job_user)
        if os.geteuid() != 0:
            raise DevClusterError(f"job user {self.job_user!r} does not exist and only root can create it")
        argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group"]
        try:
            pwd.getpwuid(self.job_uid)
            self.log(f"uid {self.job_uid} is taken; letting useradd choose one for {self.job_user}")
        except KeyError:
            argv += ["--uid", str(self.job_uid)]
        self.log(f"creating job user {self.job_user}")
        result = subprocess.run([*argv, self.job_user], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevClusterError(f"useradd {self.job_user} failed: {result.stderr.strip()}")
        return pwd.getpwnam(self.job_user)

    def _check_reachable_by_job_user(self) -> None:
        """Fail early if the job user cannot traverse to the state dir.

        Its clients read slurm.conf and the munge socket there, and slurmstepd runs the batch script from
        the spool dir inside it, so every ancestor needs the search (x) bit for others.
        """
        for directory in [self.state_dir, *self.state_dir.parents]:
            with contextlib.suppress(FileNotFoundError):
                if not directory.stat().st_mode & 0o001:
                    raise DevClusterError(
                        f"{directory} is not searchable by other users (mode "
                        f"{directory.stat().st_mode & 0o777:04o}), so job user {self.job_user} could not "
                        f"reach {self.state_dir}. Use a state dir under a world-searchable directory "
                        f"(e.g. --state-dir /var/tmp/slurmlink-dev-cluster) or 'chmod o+x {directory}'."
                    )

    # ---------------------------------------------------------------- config

    def _base_conf_lines(self, burst_buffer: BurstBufferSetup | None) -> list[str]:
        cpus = os.cpu_count() or 1
        memory = max(_memory_mib() - 1024, 256)
        sd = self.state_dir
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={NODE_NAME}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={sd / 'state'}",
            f"SlurmdSpoolDir={sd / 'spool'}/slurmd.%n",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.slurmd_log}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups and no systemd: /proc based tracking, no task binding, no accounting daemons.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            # Defaults (sched_min_interval=2s, batch_sched_delay=3s, 60 s main / 30 s backfill passes) add
            # seconds to every job; short intervals make test jobs start within about a second.
            "SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0,sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # Completed jobs stay visible to "scontrol show job" for 5 minutes.
            "MinJobAge=300",
        ]
        if burst_buffer is not None:
            lines += ["BurstBufferType=burst_buffer/lua", "DebugFlags=BurstBuffer"]
        lines += [
            f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 NodeHostname={NODE_NAME} CPUs={cpus} "
            f"RealMemory={memory} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        return lines

    def render_slurm_conf(
        self, burst_buffer: BurstBufferSetup | None, extra_lines: Iterable[str] = ()
    ) -> str:
        """The slurm.conf text; an extra line replaces the default line with the same key."""
        extra = [line.strip() for line in extra_lines if line.strip()]
        overridden = {key for key in map(_conf_key, extra) if key is not None}
        lines = [line for line in self._base_conf_lines(burst_buffer) if _conf_key(line) not in overridden]
        header = "# Generated by slurmlink dev-cluster; rewritten on every 'up'.\n"
        return header + "\n".join([*lines, *extra]) + "\n"

    def render_config(
        self,
        burst_buffer: BurstBufferSetup | None,
        *,
        extra_lines: Iterable[str] = (),
        extra_files: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Write slurm.conf (and the burst buffer files, and ``extra_files``) into ``state_dir/etc``.

        ``extra_files`` maps file names to contents, for plugins that read files next to slurm.conf
        (``job_submit.lua`` for ``JobSubmitPlugins=lua``). Returns the config keys that changed in a way
        that needs a reconfigure ("*" for a changed .conf file), so an unchanged ``up`` skips it.
        """
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        self.etc_dir.chmod(0o755)
        changed: set[str] = set()
        old_conf = self.slurm_conf.read_text() if self.slurm_conf.exists() else ""
        new_conf = self.render_slurm_conf(burst_buffer, extra_lines)
        if old_conf != new_conf:
            changed |= _changed_keys(old_conf, new_conf)
            self._write(self.slurm_conf, new_conf)
        files: dict[str, str | None] = {
            "burst_buffer.lua": burst_buffer.lua_source if burst_buffer else None,
            "burst_buffer.conf": burst_buffer.conf_text if burst_buffer else None,
        }
        files.update(extra_files or {})
        for name, content in files.items():
            if "/" in name or name in ("", ".", "..", "slurm.conf"):
                raise DevClusterError(f"invalid extra config file name {name!r}")
            path = self.etc_dir / name
            old = path.read_text() if path.exists() else None
            if old == content:
                continue
            if content is None:
                path.unlink()
            else:
                self._write(path, content)
            # Lua scripts are re-read by the plugins on every call; .conf files need a reconfigure.
            if name.endswith(".conf"):
                changed.add("*")
        return changed

    @staticmethod
    def _write(path: Path, content: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(content)
        tmp.chmod(0o644)
        tmp.replace(path)

    def _save_settings(self) -> None:
        settings = {
            "ctld_port": self.ctld_port,
            "slurmd_port": self.slurmd_port,
            "job_user": self.job_user,
            "job_uid": self.job_uid,
            "cluster_name": self.cluster_name,
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

    # ----------------------------------------------------------- processes

    def _pid(self, daemon: _Daemon) -> int | None:
        """Pid of ``daemon`` if its pid file names a live process that really is our daemon."""
        return running_pid(daemon.pid_file, daemon.matches)

    def _start(self, daemon: _Daemon) -> int:
        self.log(f"starting {daemon.name}")
        env = dict(os.environ, SLURM_CONF=str(self.slurm_conf), PYTHONUNBUFFERED="1")
        pid = spawn_detached(daemon.argv, daemon.log_file, env=env, cwd=self.state_dir)
        self._spawned[daemon.name] = pid
        self._start_order.append((daemon, pid))
        # Written right away so "down" can find it even if the daemon dies before writing its own.
        supervise.write_pid(daemon.pid_file, pid)
        return pid

    def _died_check(self, daemon: _Daemon) -> Callable[[], None]:
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

    def _log_tail(self, daemon: _Daemon, lines: int = 15) -> str:
        return supervise.log_tail([daemon.log_file, self.log_dir / f"{daemon.name}.log"], lines)

    def _stop(self, daemon: _Daemon, timeout: float) -> None:
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
            (self.state_dir / "spool" / f"slurmd.{NODE_NAME}", 0o755),
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
    ) -> DevClusterStatus:
        """Start the cluster (or refresh a running one) and wait until the node is idle.

        ``gateway`` installs slurmlink's real plugin (instead of ``burst_buffer``) and runs its gateway,
        started before slurmctld and waited for until it reports healthy. Without it a gateway left by an
        earlier ``up`` is stopped.

        Idempotent: daemons that are already running are kept; if the rendered configuration changed they
        get ``scontrol reconfigure`` (or a restart, for keys such as ports or BurstBufferType that need
        one). An unchanged config is not reconfigured, because a reconfigure delays the next burst buffer
        job's stage-in by 10+ s. The gateway is restarted only when its kubeconfig or options changed.
        """
        started = time.monotonic()
        if gateway is not None and burst_buffer is not None:
            raise DevClusterError("give either a burst_buffer plugin or a gateway setup, not both")
        if os.geteuid() != 0:
            raise DevClusterError("the dev cluster runs slurmctld/slurmd as root: run 'up' as root")
        self.ensure_packages()
        self.ensure_job_user()
        self._check_reachable_by_job_user()
        self._prepare_dirs()
        plugin_conf_changed = False
        if gateway is not None:
            burst_buffer, plugin_conf_changed = self._install_plugin(gateway)
        changed = self.render_config(burst_buffer, extra_lines=extra_lines, extra_files=extra_files)
        if plugin_conf_changed:
            changed.add("*")
        self._save_settings()

        first_new = len(self._start_order)
        try:
            self._start_daemons(changed, gateway, wait_timeout)
        except BaseException:
            # A failed up leaves nothing of its own behind; the exception carries the reason.
            self._stop_started_since(first_new)
            raise
        self.log(
            f"node {NODE_NAME} ready after {time.monotonic() - started:.1f} s; SLURM_CONF={self.slurm_conf}"
        )
        return self.status()

    def _start_daemons(self, changed: set[str], gateway: GatewaySetup | None, wait_timeout: float) -> None:
        """Restart or reconfigure what runs, start what does not, and wait until the node is idle."""
        daemons = {d.name: d for d in self._daemons()}
        running = {name: self._pid(d) is not None for name, d in daemons.items()}
        if changed & _RESTART_KEYS and (running["slurmctld"] or running["slurmd"]):
            self.log(f"restarting Slurm for changed {', '.join(sorted(changed & _RESTART_KEYS))}")
            for name in ("slurmd", "slurmctld"):
                self._stop(daemons[name], 10)
                running[name] = False
        elif changed and running["slurmctld"]:
            self.log("configuration changed; running scontrol reconfigure")
            result = self.run_slurm(["scontrol", "reconfigure"], timeout=30)
            if result.returncode != 0:
                raise DevClusterError(f"scontrol reconfigure failed: {result.stderr.strip()}")
        elif running["munged"] and running["slurmctld"] and running["slurmd"]:
            self.log("already running; configuration unchanged")

        if not running["munged"]:
            self._check_ports()  # before anything starts, so a clash fails cleanly
            stale = [self.munge_socket, self.munge_socket.with_name(self.munge_socket.name + ".lock")]
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._start(daemons["munged"])
            _wait_until(
                self.munge_socket.exists, 20, "the munge socket", check=self._died_check(daemons["munged"])
            )
        elif not running["slurmctld"] or not running["slurmd"]:
            self._check_ports()
        # slurmctld calls slurm_bb_pools through the gateway as soon as it starts.
        gateway_daemon = self._ensure_gateway(gateway, wait_timeout)
        for name in ("slurmctld", "slurmd"):
            if not running[name]:
                self._start(daemons[name])

        watched = [daemons["slurmctld"], daemons["slurmd"]]
        if gateway_daemon is not None:
            watched.append(gateway_daemon)
        self._wait_idle(wait_timeout, watched)

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

    def _gateway_state(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.run_dir / GATEWAY_STATE_FILE).read_text())
            return state if isinstance(state, dict) else None
        return None

    def _ensure_gateway(self, gateway: GatewaySetup | None, timeout: float) -> _Daemon | None:
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
            _wait_until(
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
        wanted = []
        if self._pid(self._daemon("slurmctld")) is None:
            wanted.append(("SlurmctldPort", self.ctld_port))
        if self._pid(self._daemon("slurmd")) is None:
            wanted.append(("SlurmdPort", self.slurmd_port))
        busy = [f"{name} {port}" for name, port in wanted if not _port_free(port)]
        if busy:
            raise DevClusterError(
                f"port(s) already in use: {', '.join(busy)}; pick others with --ctld-port/--slurmd-port"
            )

    def _wait_idle(self, timeout: float, daemons: Sequence[_Daemon]) -> None:
        checks = [self._died_check(d) for d in daemons]
        last_resume = [-1e9]

        def probe() -> bool:
            state = self.node_state()
            if state is None:
                return False
            base = state.split("+")[0].rstrip("*~#!%$@^-").lower()
            # A fresh node comes up idle; on a re-run it may be busy with jobs, which is just as ready.
            if base in _READY_STATES and not state.endswith("*"):
                return True
            if base.startswith(("down", "drain", "fail")) and time.monotonic() - last_resume[0] > 2:
                # Left over from an unclean stop; ReturnToService=2 does not undo an admin "down".
                self.log(f"node state {state}; resuming")
                self.run_slurm(["scontrol", "update", f"nodename={NODE_NAME}", "state=resume"], timeout=10)
                last_resume[0] = time.monotonic()
            return False

        def check() -> None:
            for check_one in checks:
                check_one()

        _wait_until(probe, timeout, f"node {NODE_NAME} to become idle", check=check)

    def down(self, purge: bool = False, timeout: float = 10) -> None:
        """Stop the daemons this cluster started (by pid file, after checking /proc cmdline).

        State, logs and config stay unless ``purge``, which deletes the whole state dir.
        """
        # slurmscriptd exits with slurmctld; the gateway outlives slurmctld's last callbacks.
        for name in ("slurmd", "slurmctld", "gateway", "munged"):
            self._stop(self._daemon(name), timeout)
        with contextlib.suppress(FileNotFoundError):
            self.gateway_socket.unlink()
        if purge and self.state_dir.exists():
            if not (self.state_dir / SETTINGS_FILE).exists() and not self.slurm_conf.exists():
                raise DevClusterError(
                    f"refusing to purge {self.state_dir}: it does not look like a dev cluster"
                )
            self.log(f"purging {self.state_dir}")
            shutil.rmtree(self.state_dir)

    def status(self) -> DevClusterStatus:
        """Which daemons run, and the node state as slurmctld sees it (None if it cannot be asked)."""
        pids = {d.name: self._pid(d) for d in self._daemons()}
        node_state = self.node_state() if pids["slurmctld"] and pids["munged"] else None
        return DevClusterStatus(
            state_dir=self.state_dir,
            ctld_port=self.ctld_port,
            slurmd_port=self.slurmd_port,
            munged=pids["munged"] is not None,
            slurmctld=pids["slurmctld"] is not None,
            slurmd=pids["slurmd"] is not None,
            node_state=node_state,
            pids=pids,
            gateway=pids["gateway"] is not None,
            gateway_enabled=(self.run_dir / GATEWAY_STATE_FILE).exists(),
        )

    def env(self) -> dict[str, str]:
        """Environment for Slurm clients talking to this cluster."""
        return {"SLURM_CONF": str(self.slurm_conf), "SLURMLINK_JOB_USER": self.job_user}

    # --------------------------------------------------------------- clients

    def run_slurm(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command as the current user (root) against this cluster."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        env = dict(kw.pop("env", None) or os.environ)
        env["SLURM_CONF"] = str(self.slurm_conf)
        result: subprocess.CompletedProcess[str] = subprocess.run(list(args), env=env, **kw)
        return result

    def run_as_job_user(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as the job user via ``runuser`` (no shell), with SLURM_CONF set.

        Keyword arguments go to :func:`subprocess.run`; output is captured as text and the working
        directory defaults to the job user's home, since root's cwd is usually not writable for it.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        if "cwd" not in kw:
            with contextlib.suppress(KeyError):
                kw["cwd"] = pwd.getpwnam(self.job_user).pw_dir
        argv = ["runuser", "-u", self.job_user, "--", "env", f"SLURM_CONF={self.slurm_conf}", *args]
        result: subprocess.CompletedProcess[str] = subprocess.run(argv, **kw)
        return result

    def node_state(self) -> str | None:
        """``sinfo``'s state of the node (e.g. ``idle``, ``down*``), None while slurmctld does not answer."""
        try:
            result = self.run_slurm(["sinfo", "-h", "-n", NODE_NAME, "-o", "%T"], timeout=10)
        except subprocess.TimeoutExpired:
            return None
        state = result.stdout.strip()
        return state if result.returncode == 0 and state else None

    def job_info(self, job_id: int | str) -> dict[str, str] | None:
        """``scontrol show job`` as a dict, None once the job is unknown (e.g. purged after MinJobAge)."""
        result = self.run_slurm(["scontrol", "show", "job", str(job_id)], timeout=10)
        if result.returncode != 0:
            return None
        return parse_scontrol_record(result.stdout)

    def wait_for_job(
        self, job_id: int | str, states: Iterable[str] = ("COMPLETED",), timeout: float = 60
    ) -> dict[str, str]:
        """Poll until the job reaches one of ``states``; fails fast if it ends in another final state."""
        wanted = {s.upper() for s in states}
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
        last: dict[str, str] = {}

        def probe() -> dict[str, str] | None:
            nonlocal last
            last = self.job_info(job_id) or last
            state = last.get("JobState", "")
            if state in wanted:
                return last
            if state in final:
                raise DevClusterError(f"job {job_id} ended {state}, wanted {sorted(wanted)}: {last}")
            return None

        try:
            return _wait_until(probe, timeout, f"job {job_id} to reach {sorted(wanted)}")
        except DevClusterError as exc:
            if "timed out" in str(exc):
                raise DevClusterError(f"{exc}; last seen: {last}") from None
            raise


def _changed_keys(old: str, new: str) -> set[str]:
    """Config keys whose lines differ between two slurm.conf texts."""

    def lines_by_key(text: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for line in text.splitlines():
            key = _conf_key(line)
            if key is not None:
                out.setdefault(key, set()).add(line.strip())
        return out

    before, after = lines_by_key(old), lines_by_key(new)
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
