"""The dev cluster's daemons: how each is started and recognised, and how to tell the gateway is ready.

munged, ``slurmctld -D``, ``slurmd -D`` and ``mariadbd`` run in the foreground (so the pid we spawn is the
daemon's) and carry this cluster's paths on their command lines; the gateway's ``--socket`` does the same
for it. ``slurmdbd -D`` takes no path at all (it finds its config next to ``SLURM_CONF``), so it is
recognised by its environment instead. Each compute node has its own slurmd (``slurmd@<node>``), started
inside the node's namespaces by nsenter, which execs it: the spawned pid is slurmd's.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmlink.slurm.devcluster.layout import COMPUTE, Layout
from slurmlink.slurm.devcluster.mariadb import MariaDB
from slurmlink.slurm.devcluster.nodes import ns_command

#: slurmd of a compute node is the daemon ``slurmd@<node>``.
SLURMD_PREFIX = "slurmd@"


@dataclass(frozen=True)
class Daemon:
    name: str
    pid_file: Path
    log_file: Path
    #: What is spawned (for a node's slurmd: nsenter ... -- slurmd ...).
    argv: tuple[str, ...]
    #: For a Python daemon (the gateway): the argv after the interpreter that names the program. Its
    #: ``--socket`` value makes the command line unique to this cluster.
    python_prefix: tuple[str, ...] = ()
    #: The command line the daemon shows once running, when it differs from ``argv`` (nsenter execs it).
    program: tuple[str, ...] = ()
    #: Variables it is started with, on top of the supervisor's. A running process is this daemon only if
    #: its environment has them too (what tells one cluster's ``slurmdbd -D`` from another's).
    env: tuple[tuple[str, str], ...] = ()

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
        # Our Slurm daemons carry this cluster's paths on their command line (a reused pid would not), and
        # a node's slurmd its node name.
        program = list(self.program or self.argv)
        return (
            Path(argv[0]).name == program[0]
            and program[-1] in argv
            and _option_value(list(argv), "-N") == _option_value(program, "-N")
        )

    def environ_matches(self, environ: dict[str, str]) -> bool:
        """Whether a process started with ``environ`` has this daemon's :attr:`env`."""
        return all(environ.get(key) == value for key, value in self.env)


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


def port_free(port: int) -> bool:
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


class DaemonSpecs(Layout):
    """This cluster's daemons (munged, slurmctld, slurmd, the gateway, and for accounting MariaDB and
    slurmdbd) as :class:`Daemon` specs."""

    @property
    def mariadb(self) -> MariaDB:
        """The private MariaDB that slurmdbd keeps the accounting in."""
        return MariaDB(self.mariadb_dir)

    def _accounting_daemons(self) -> list[Daemon]:
        """mariadbd, and slurmdbd with the socket it reaches it through (see :mod:`.slurmdbd`)."""
        mariadb = self.mariadb
        return [
            Daemon("mariadbd", self.run_dir / "mariadbd.pid", self.log_dir / "mariadbd.log", mariadb.argv()),
            Daemon(
                "slurmdbd",
                self.run_dir / "slurmdbd.pid",
                self.log_dir / "slurmdbd.stdout",
                ("slurmdbd", "-D"),
                env=(("SLURM_CONF", str(self.slurm_conf)), ("MYSQL_UNIX_PORT", str(mariadb.socket))),
            ),
        ]

    def _gateway_daemon(self, extra_args: Sequence[str] = ()) -> Daemon:
        prefix = ("-m", "slurmlink.cli.main", "slurm", "gateway")
        return Daemon(
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

    def _daemons(self) -> list[Daemon]:
        conf = str(self.slurm_conf)
        return [
            Daemon(
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
            Daemon(
                "slurmctld",
                self.run_dir / "slurmctld.pid",
                self.log_dir / "slurmctld.stdout",
                ("slurmctld", "-D", "-f", conf),
            ),
            *(self._slurmd_daemon(node) for node in self.node_names(COMPUTE)),
            self._gateway_daemon(),
            *self._accounting_daemons(),
        ]

    def _slurmd_daemon(self, node: str) -> Daemon:
        """slurmd of compute node ``node``, inside its namespaces."""
        program = ("slurmd", "-D", "-N", node, "-f", str(self.slurm_conf))
        return Daemon(
            f"{SLURMD_PREFIX}{node}",
            self.slurmd_pid_file(node),
            self.log_dir / f"slurmd.{node}.stdout",
            tuple(ns_command(self.ns_dir / node, program, cwd=self.state_dir)),
            program=program,
        )

    def _legacy_slurmd(self) -> Daemon:
        """The one slurmd of a dev cluster made before nodes had namespaces (node "localhost")."""
        return Daemon(
            "slurmd",
            self.run_dir / "slurmd.pid",
            self.log_dir / "slurmd.stdout",
            ("slurmd", "-D", "-N", "localhost", "-f", str(self.slurm_conf)),
        )

    def _daemon(self, name: str) -> Daemon:
        return next(d for d in self._daemons() if d.name == name)
