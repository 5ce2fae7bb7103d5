"""Running commands on a node, and the few file operations the drivers need there.

A node may be this host or a set of namespaces (network, UTS, mount) of a dev-cluster node; a real
cluster could add a remote runner. A :class:`NodeRunner` turns an argv into the argv that runs it on
the node (``command``): no prefix runs it here, ``("nsenter", "--net=/run/netns/s1", "--")`` runs it
inside a network namespace, and the dev cluster's helper provides the prefix for its nodes. Everything
a driver does to a node goes through its runner: programs (``mkfs.xfs``, ``mount``, ``gluster``) and
file operations alike (``mkdir``, ``cat``, ``rm``), so a node's mount namespace is always the one that
sees them. An agent's runner for its own node (no prefix) does the file operations, and the reads of
XFS UUIDs and mounts (``loop``, ``mounts``), in its own process, which is in that
namespace: an agent makes dozens per buffer, and each program started costs about a millisecond of CPU
on the node. Commands are argv lists; no shell ever parses them.

Drivers look runners up by node name with a :data:`RunnerLookup` (default: :func:`local_runners`,
every node is this host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slurmlink.storage.filesystems.errors import CommandError, MissingToolError, StateError

#: Seconds a command may run before it counts as failed (mkfs of a large device stays well below).
DEFAULT_TIMEOUT = 120.0
#: Exit status of ``env``/``nsenter``/``ip netns exec`` when the program to run does not exist.
_NOT_FOUND = 127
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _environment() -> dict[str, str]:
    """This process's environment with the sbin directories on PATH and untranslated messages."""
    env = dict(os.environ)
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join([*path, *(d for d in _SBIN if d not in path)])
    env["LC_ALL"] = "C"
    return env


@dataclass(frozen=True)
class NodeRunner:
    """Runs argv lists on one node: ``prefix + argv`` run from this process.

    ``prefix`` must end in something that execs the rest (``nsenter ... --``, ``ip netns exec NAME``),
    so the pid of a daemon run through it is the daemon's. Subclasses may override :meth:`command`.
    """

    name: str = "localhost"
    prefix: tuple[str, ...] = ()
    #: Extra environment for every command (e.g. a node's ``PATH``).
    env: Mapping[str, str] = field(default_factory=dict)
    #: Instead of ``prefix``: a function giving the argv that runs an argv on the node (such as the
    #: dev cluster's per-node helper).
    wrap: Callable[[Sequence[str]], list[str]] | None = None

    @property
    def here(self) -> bool:
        """Whether commands run in this process's own namespaces (no prefix, no wrap): the file
        operations below are then done in this process instead of by a program each (an agent makes
        several per buffer; each program started costs about a millisecond of CPU)."""
        return not self.prefix and self.wrap is None

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on this node."""
        if self.wrap is not None:
            return list(self.wrap(list(argv)))
        return [*self.prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        hint: str = "",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the node and wait; stdout and stderr are captured as text.

        Raises :class:`MissingToolError` when the program is not installed there, and with ``check``
        :class:`CommandError` (carrying ``hint``) when it exits non-zero or runs out of time.
        """
        full = self.command(argv)
        env = _environment()
        env.update(self.env)
        try:
            result = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            missing = exc.filename or full[0]
            raise MissingToolError(self.name, os.path.basename(str(missing))) from None
        except subprocess.TimeoutExpired as exc:
            output = exc.stderr or exc.stdout or ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise CommandError(self.name, argv, None, output, hint=hint) from None
        if result.returncode == _NOT_FOUND and _program_missing(result.stderr, argv):
            raise MissingToolError(self.name, _program(argv))
        if check and result.returncode != 0:
            raise CommandError(self.name, argv, result.returncode, result.stderr or result.stdout, hint=hint)
        return result

    def __str__(self) -> str:
        return self.name if not self.prefix else f"{self.name} ({shlex.join(self.prefix)})"


def _program(argv: Sequence[str]) -> str:
    """The program ``argv`` runs, looking through an ``env K=V ...`` wrapper."""
    words = list(argv)
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if "=" not in w]
    return os.path.basename(words[0]) if words else ""


def _program_missing(stderr: str, argv: Sequence[str]) -> bool:
    """An exit status of 127 from a wrapper that could not find the program (not the program's own)."""
    program = _program(argv)
    return bool(program) and program in stderr and "No such file or directory" in stderr


#: Finds the runner of a node by name.
RunnerLookup = Callable[[str], NodeRunner]


def local_runners(name: str) -> NodeRunner:
    """Every node is this host (single-host sites, unit tests, an agent running on its node)."""
    return NodeRunner(name=name)


def static_runners(runners: Mapping[str, NodeRunner]) -> RunnerLookup:
    """A lookup over a fixed set of runners; an unknown node is an error."""

    def lookup(name: str) -> NodeRunner:
        try:
            return runners[name]
        except KeyError:
            raise StateError(f"no runner for node {name!r} (known: {', '.join(sorted(runners))})") from None

    return lookup


# --- file operations on a node ----------------------------------------------------------------------


def check_path(path: str, what: str = "path") -> str:
    """``path`` if it is absolute, normalised and not ``/``; StateError otherwise."""
    if (
        not path.startswith("/")
        or path == "/"
        or os.path.normpath(path) != path
        or "\0" in path
        or "\n" in path
    ):
        raise StateError(f"{what} {path!r} must be an absolute, normalised path below /")
    return path


def _failed(runner: NodeRunner, argv: Sequence[str], exc: OSError) -> CommandError:
    """The error the command ``argv`` would have raised, for an operation done in this process."""
    return CommandError(runner.name, argv, 1, f"{exc.strerror or exc}: {exc.filename or argv[-1]}")


def exists(runner: NodeRunner, path: str) -> bool:
    if runner.here:
        return os.path.exists(path)
    return runner.run(["test", "-e", path], check=False).returncode == 0


def is_dir(runner: NodeRunner, path: str) -> bool:
    if runner.here:
        return os.path.isdir(path)
    return runner.run(["test", "-d", path], check=False).returncode == 0


def make_dirs(runner: NodeRunner, path: str, mode: int | None = None) -> None:
    """``mkdir -p``; ``mode`` applies to the last component only, and only when it is created."""
    argv = ["mkdir", "-p", *(["-m", f"{mode:o}"] if mode is not None else []), "--", path]
    if not runner.here:
        runner.run(argv)
        return
    try:
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return
        if mode is not None:
            os.chmod(path, mode)  # exactly this, as mkdir -m sets it (the umask left out)
    except OSError as exc:
        raise _failed(runner, argv, exc) from None


def remove_tree(runner: NodeRunner, path: str) -> None:
    """``rm -rf`` that never crosses into another mounted file system (a mount left inside fails it)."""
    check_path(path)
    runner.run(["rm", "-rf", "--one-file-system", "--", path])


def remove_file(runner: NodeRunner, path: str) -> None:
    argv = ["rm", "-f", "--", path]
    if not runner.here:
        runner.run(argv)
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _failed(runner, argv, exc) from None


def remove_empty_dir(runner: NodeRunner, path: str) -> None:
    """``rmdir`` if it exists and is empty; anything else is left as it is."""
    if not runner.here:
        runner.run(["rmdir", "--", path], check=False)
        return
    with contextlib.suppress(OSError):
        os.rmdir(path)


def read_text(runner: NodeRunner, path: str) -> str | None:
    """The file's text, or None if it does not exist."""
    if runner.here:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _failed(runner, ["cat", path], exc) from None
    result = runner.run(["cat", "--", path], check=False)
    if result.returncode == 0:
        return result.stdout
    if not exists(runner, path):
        return None
    raise CommandError(runner.name, ["cat", path], result.returncode, result.stderr)


def write_text(runner: NodeRunner, path: str, text: str, mode: int = 0o600) -> None:
    """Replace the file atomically (write a temporary file next to it, then rename it)."""
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
    if not runner.here:
        runner.run(["install", "-m", f"{mode:o}", "/dev/null", tmp])
        runner.run(["dd", f"of={tmp}", "conv=fsync", "status=none"], input=text)
        runner.run(["mv", "-f", "--", tmp, path])
        return
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)
            f.write(text.encode())
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise _failed(runner, ["install", "-m", f"{mode:o}", "/dev/null", tmp], exc) from None


def real_path(runner: NodeRunner, path: str) -> str:
    """``realpath -e``: the path with every link resolved; CommandError if it does not exist."""
    argv = ["realpath", "-e", "--", path]
    if not runner.here:
        return runner.run(argv).stdout.strip()
    if not os.path.exists(path):
        raise CommandError(runner.name, argv, 1, f"realpath: {path}: No such file or directory")
    return os.path.realpath(path)


def read_json(runner: NodeRunner, path: str) -> Any:
    text = read_text(runner, path)
    return None if text is None else json.loads(text)


def write_json(runner: NodeRunner, path: str, value: Any) -> None:
    write_text(runner, path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def list_dir(runner: NodeRunner, path: str) -> list[str]:
    """Names in a directory ([] if it does not exist)."""
    result = runner.run(["ls", "-1A", "--", path], check=False)
    if result.returncode != 0:
        if not exists(runner, path):
            return []
        raise CommandError(runner.name, ["ls", path], result.returncode, result.stderr)
    return [line for line in result.stdout.splitlines() if line]


@dataclass(frozen=True)
class FileStat:
    uid: int
    gid: int
    mode: int
    inode: int


def stat(runner: NodeRunner, path: str, timeout: float = DEFAULT_TIMEOUT) -> FileStat:
    out = runner.run(["stat", "-c", "%u %g %a %i", "--", path], timeout=timeout).stdout.split()
    return FileStat(int(out[0]), int(out[1]), int(out[2], 8), int(out[3]))


def ensure_owner(runner: NodeRunner, path: str, uid: int, gid: int, mode: int) -> None:
    """Give ``path`` (a file system's root) to ``uid:gid`` with ``mode``, if it is not theirs yet.

    A root that already has the owner is left alone, so a user's own ``chmod`` survives re-mounts.
    """
    current = stat(runner, path)
    if (current.uid, current.gid) != (uid, gid):
        runner.run(["chown", f"{uid}:{gid}", "--", path])
        runner.run(["chmod", f"{mode:o}", "--", path])


def wait_for(probe: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``probe`` until true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
