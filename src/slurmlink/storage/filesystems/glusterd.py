"""glusterd on a storage node: start, stop, health, and its command line (``gluster``).

Each storage node runs its own glusterd with every path of its own, so several simulated storage nodes
(each in its own network namespace) can share one machine and never see each other's state. glusterd
10 (Debian 12) reads them from its volfile, which we write per node instead of using
``/etc/glusterfs/glusterd.vol``::

    <node state dir>/glusterd/glusterd.vol    working-directory, run-directory, logging-directory,
                                              glusterd-sockfile (all below), ports, keepalives
    <node state dir>/glusterd/work/           glusterd's state (was /var/lib/glusterd): peers, volumes
    <node state dir>/glusterd/run/            pid files (glusterd.pid, vols/<volume>/*.pid of bricks),
                                              glusterd.socket (the CLI's Unix socket)
    <node state dir>/glusterd/log/            glusterd.log, cli.log, bricks/*.log

glusterd's TCP port (24007) and the brick ports are per network namespace. The one path it cannot
move is the bricks' Unix sockets (``/var/run/gluster/<hash>.socket``, compiled in); their names hash
the brick's run directory, host and path, so they never collide, and deleting a volume removes them.

The keepalive options are not optional: without them glusterd 10 fails every ``peer probe`` (it treats
their absence as an error building the peer's transport) and the probe hangs until the CLI times out.

glusterd daemonises itself (``glusterd -f VOLFILE -p PIDFILE -l LOG``, run through the node's runner);
its parent exits once it has initialised, so start needs no process handle, and a restarted agent finds
it by pid file and command line (which names this node's volfile). Bricks (``glusterfsd``) are
glusterd's children and outlive it; :meth:`Glusterd.stop` stops them too, and a started glusterd
restarts the bricks of started volumes by itself.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CommandError, StateError, StorageError
from slurmlink.storage.filesystems.interface import StorageNode
from slurmlink.storage.filesystems.runner import NodeRunner

GLUSTERD_PORT = 24007
#: The gluster CLI's own timeout for one request (seconds).
CLI_TIMEOUT = 60
#: Messages of a CLI request refused because another one holds glusterd's cluster-wide lock.
_BUSY = ("Another transaction is in progress", "Locking failed", "locking failed", "is busy")


@dataclass(frozen=True)
class GlusterdLayout:
    root: str

    @property
    def volfile(self) -> str:
        return f"{self.root}/glusterd.vol"

    @property
    def work_dir(self) -> str:
        return f"{self.root}/work"

    @property
    def run_dir(self) -> str:
        return f"{self.root}/run"

    @property
    def log_dir(self) -> str:
        return f"{self.root}/log"

    @property
    def pid_file(self) -> str:
        return f"{self.run_dir}/glusterd.pid"

    @property
    def socket(self) -> str:
        return f"{self.run_dir}/glusterd.socket"

    @property
    def log_file(self) -> str:
        return f"{self.log_dir}/glusterd.log"

    @property
    def cli_log(self) -> str:
        return f"{self.log_dir}/cli.log"

    def volume_run_dir(self, volume: str) -> str:
        return f"{self.run_dir}/vols/{volume}"

    def brick_log(self, brick_path: str) -> str:
        """glusterd names a brick's log after its path, slashes turned into dashes."""
        return f"{self.log_dir}/bricks/{brick_path.strip('/').replace('/', '-')}.log"


class Glusterd:
    """The glusterd of one storage node, reached through the node's runner."""

    def __init__(
        self,
        node: StorageNode,
        runner: NodeRunner,
        *,
        base_port: int = 49152,
        max_port: int = 60999,
    ) -> None:
        self.node = node
        self.runner = runner
        self.layout = GlusterdLayout(f"{node.node_state_dir}/glusterd")
        self.base_port = base_port
        self.max_port = max_port

    # --- lifecycle ------------------------------------------------------------------------------------

    def volfile_text(self) -> str:
        layout = self.layout
        options = [
            ("working-directory", layout.work_dir),
            ("run-directory", layout.run_dir),
            ("logging-directory", layout.log_dir),
            ("glusterd-sockfile", layout.socket),
            ("transport-type", "socket"),
            ("transport.socket.listen-port", str(GLUSTERD_PORT)),
            ("transport.socket.keepalive-time", "10"),
            ("transport.socket.keepalive-interval", "2"),
            ("transport.tcp-user-timeout", "0"),
            ("transport.socket.read-fail-log", "off"),
            ("ping-timeout", "0"),
            ("event-threads", "1"),
            ("base-port", str(self.base_port)),
            ("max-port", str(self.max_port)),
        ]
        lines = ["volume management", "    type mgmt/glusterd"]
        lines += [f"    option {key} {value}" for key, value in options]
        lines.append("end-volume")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60) -> None:
        """Start glusterd unless it runs; return once it answers the CLI. Idempotent."""
        if self.pid() is None:
            self._require_tools()
            layout = self.layout
            for directory in (layout.root, layout.work_dir, layout.run_dir, layout.log_dir):
                nodefs.make_dirs(self.runner, directory, mode=0o755)
            if nodefs.read_text(self.runner, layout.volfile) != self.volfile_text():
                nodefs.write_text(self.runner, layout.volfile, self.volfile_text(), mode=0o644)
            argv = ["glusterd", "-f", layout.volfile, "-p", layout.pid_file, "-l", layout.log_file]
            result = self.runner.run(argv, check=False, timeout=timeout)
            if result.returncode != 0:
                raise StorageError(
                    f"glusterd did not start on node {self.node.name} (exit code {result.returncode}): "
                    f"{(result.stderr or result.stdout).strip()}\n{self.log_tail()}"
                )
        if not nodefs.wait_for(self.healthy, timeout, interval=0.2):
            state = "exited" if self.pid() is None else "does not answer"
            raise StorageError(
                f"glusterd on node {self.node.name} {state} after start ({timeout:g} s); its log:\n"
                f"{self.log_tail()}"
            )
        self.prune()

    def stop(self, timeout: float = 30, *, bricks: bool = True) -> None:
        """Stop glusterd (TERM, then KILL after ``timeout``) and, with ``bricks``, the brick processes
        it started. Idempotent; the volumes stay defined and come back with the next start."""
        pid = self.pid()
        if pid is not None:
            self._terminate(pid, "glusterd", timeout)
        if bricks:
            for pid, _ in self.daemon_pids():
                self._terminate(pid, "glusterfsd", timeout)

    def pid(self) -> int | None:
        """glusterd's pid if it runs (its pid file names a live process running this node's volfile)."""
        pid = self._read_pid(self.layout.pid_file)
        if pid is None:
            return None
        argv = self._cmdline(pid)
        if argv and argv[0].endswith("glusterd") and self.layout.volfile in argv:
            return pid
        return None

    def healthy(self) -> bool:
        """glusterd answers its CLI socket."""
        return self.unanswered() is None

    def unanswered(self) -> str | None:
        """None when glusterd answers its CLI socket, else what the CLI said instead. A request
        refused because another one holds the cluster lock is an answer."""
        try:
            result = self.cli(["pool", "list"], check=False, timeout=15, retries=0)
        except StorageError as exc:
            return str(exc)
        output = (result.stderr + result.stdout).strip()
        if result.returncode == 0 or any(busy in output for busy in _BUSY):
            return None
        return output or f"gluster exited with code {result.returncode}"

    def daemon_pids(self, volume: str | None = None) -> list[tuple[int, str]]:
        """Live processes glusterd started (bricks), as (pid, pid file), of one volume or all."""
        base = self.layout.volume_run_dir(volume) if volume else self.layout.run_dir
        if not nodefs.is_dir(self.runner, base):
            return []
        out = self.runner.run(["find", base, "-name", "*.pid", "-type", "f"]).stdout
        found = []
        for pid_file in out.splitlines():
            if pid_file == self.layout.pid_file:
                continue
            pid = self._read_pid(pid_file)
            if pid is not None and pid_file in self._cmdline(pid):
                found.append((pid, pid_file))
        return found

    def brick_sockets(self, volume: str) -> list[str]:
        """The Unix sockets of the volume's running bricks (from their command lines)."""
        sockets = []
        for pid, _ in self.daemon_pids(volume):
            argv = self._cmdline(pid)
            if "-S" in argv[:-1]:
                sockets.append(argv[argv.index("-S") + 1])
        return sockets

    def prune(self) -> None:
        """Remove the run directories of volumes this glusterd no longer has.

        Every glusterd of a pool makes one for each started volume, bricks there or not; deleting a
        volume leaves them (empty) on the nodes that held none of its bricks.
        """
        base = f"{self.layout.run_dir}/vols"
        known = set(self.volumes())
        for name in nodefs.list_dir(self.runner, base):
            if name not in known and not self.daemon_pids(name):
                nodefs.remove_tree(self.runner, f"{base}/{name}")

    def volumes(self) -> list[str]:
        """The volumes glusterd knows (those of its whole trusted pool)."""
        out = self.cli(["volume", "list"]).stdout
        return [] if out.startswith("No volumes present") else out.split()

    def forget_volume(self, volume: str, brick_paths: Sequence[str], sockets: Sequence[str]) -> None:
        """Remove what glusterd leaves of a deleted volume: its run directory, brick logs, sockets."""
        run_dir = self.layout.volume_run_dir(volume)
        nodefs.remove_tree(self.runner, run_dir)
        for path in brick_paths:
            nodefs.remove_file(self.runner, self.layout.brick_log(path))
        for socket in sockets:
            if socket.startswith("/var/run/gluster/") or socket.startswith("/run/gluster/"):
                nodefs.remove_file(self.runner, socket)

    # --- the CLI --------------------------------------------------------------------------------------

    def cli(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = CLI_TIMEOUT,
        retries: int = 10,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``gluster ARGS`` against this node's glusterd (script mode: no questions asked).

        A request refused because another transaction holds the cluster lock is retried.
        """
        argv = [
            "gluster",
            "--mode=script",
            f"--glusterd-sock={self.layout.socket}",
            f"--log-file={self.layout.cli_log}",
            f"--timeout={int(timeout)}",
            *args,
        ]
        for attempt in range(retries + 1):
            result = self.runner.run(argv, check=False, timeout=timeout + 10)
            output = (result.stderr + result.stdout).strip()
            if result.returncode == 0 or not any(busy in output for busy in _BUSY) or attempt == retries:
                break
            time.sleep(min(0.5 * (attempt + 1), 3))
        if check and result.returncode != 0:
            raise CommandError(self.runner.name, argv, result.returncode, output)
        return result

    def cli_xml(self, args: Sequence[str], *, timeout: float = CLI_TIMEOUT) -> ET.Element:
        """``gluster ARGS --xml`` parsed; raises CommandError when glusterd reports a failure."""
        result = self.cli([*args, "--xml"], check=False, timeout=timeout)
        try:
            root = ET.fromstring(result.stdout)
        except ET.ParseError:
            raise CommandError(
                self.runner.name,
                ["gluster", *args, "--xml"],
                result.returncode,
                result.stderr or result.stdout,
            ) from None
        if root.findtext("opRet", "0") != "0" or result.returncode != 0:
            message = root.findtext("opErrstr") or result.stderr or "no error text"
            raise CommandError(self.runner.name, ["gluster", *args], result.returncode, message)
        return root

    def log_tail(self, lines: int = 20) -> str:
        result = self.runner.run(["tail", "-n", str(lines), self.layout.log_file], check=False)
        return result.stdout.strip() or f"(no log at {self.layout.log_file})"

    # --- processes ------------------------------------------------------------------------------------

    def _require_tools(self) -> None:
        self.runner.run(["glusterd", "--version"])
        self.runner.run(["gluster", "--version"])

    def _read_pid(self, pid_file: str) -> int | None:
        text = nodefs.read_text(self.runner, pid_file)
        text = (text or "").strip()
        return int(text) if text.isdigit() else None

    def _cmdline(self, pid: int) -> list[str]:
        """The command line of a live (non-zombie) process on the node; [] if there is none."""
        stat = self.runner.run(["cat", f"/proc/{pid}/stat"], check=False).stdout
        if not stat or stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X"):
            return []
        raw = self.runner.run(["cat", f"/proc/{pid}/cmdline"], check=False).stdout
        return [part for part in raw.split("\0") if part]

    def _terminate(self, pid: int, what: str, timeout: float) -> None:
        self.runner.run(["kill", "-TERM", str(pid)], check=False)
        if nodefs.wait_for(lambda: not self._cmdline(pid), timeout, interval=0.1):
            return
        self.runner.run(["kill", "-KILL", str(pid)], check=False)
        if not nodefs.wait_for(lambda: not self._cmdline(pid), 10, interval=0.1):
            raise StateError(f"on node {self.node.name}: {what} (pid {pid}) survives SIGKILL")


def parse_peers(root: ET.Element) -> dict[str, tuple[bool, str]]:
    """``pool list --xml`` / ``peer status --xml``: every name of each peer -> (connected, state)."""
    peers: dict[str, tuple[bool, str]] = {}
    for peer in root.iter("peer"):
        connected = peer.findtext("connected") == "1"
        state = peer.findtext("stateStr") or ""
        names = {peer.findtext("hostname") or ""}
        names.update(h.text or "" for h in peer.iter("hostname"))
        for name in names - {""}:
            peers[name] = (connected, state)
    return peers
