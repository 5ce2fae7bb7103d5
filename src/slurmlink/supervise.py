"""Supervising local daemons: spawn detached, pid files, liveness, wait until ready, stop.

Used by the dev cluster (munged, slurmctld, slurmd, the gateway), ``slurmlink serve`` as a subprocess
(quick start, tests, benchmarks), and the gateway's front, which shares only the stop (:func:`stop_child`):
its worker is an asyncio child it awaits, restarts, and cues to shut down through a stdin pipe.
Two ways to know whether a daemon lives:

* one this process spawned is judged by its :class:`subprocess.Popen` handle. Its pid cannot be reused
  before this process reaps it, so neither a pid file (which the daemon may be rewriting) nor its
  ``/proc`` command line (empty until the kernel has finished ``exec``) is needed or trusted;
* one started by an earlier process is found through its pid file, and its ``/proc/PID/cmdline`` must
  match, so that a pid reused by another program is never taken for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

LogFn = Callable[[str], None]
_T = TypeVar("_T")

POLL_INTERVAL = 0.1
#: How long a just-exec'd process may show an empty /proc cmdline before it is taken for something else.
_EXEC_SETTLE = 1.0

# Popen objects of daemons this process started, so they can be reaped (no zombies, no ResourceWarning)
# and judged alive without pid files.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class SupervisionError(RuntimeError):
    """A daemon did not start, exited early, or did not become ready; the message has its log tail."""


class WaitTimeout(SupervisionError):
    """A wait ran out of time (the condition never held, and nothing said it never would)."""


def wait_until(
    probe: Callable[[], _T | None], timeout: float, what: str, check: Callable[[], None] | None = None
) -> _T:
    """Poll ``probe`` until it returns something truthy; ``check`` may raise early (e.g. a daemon died).

    Raises :class:`WaitTimeout` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def spawn_detached(argv: Sequence[str], log_file: Path, *, env: Mapping[str, str], cwd: Path) -> int:
    """Start a daemon in its own session with output appended to ``log_file``; returns its pid.

    It outlives this process; while this process lives, it is reaped as soon as it exits (no zombies).
    """
    return spawn(argv, log_file, env=env, cwd=cwd).pid


def spawn(
    argv: Sequence[str], log_file: Path, *, env: Mapping[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """:func:`spawn_detached`, returning the process handle (for callers that want its exit status)."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def is_child(pid: int) -> bool:
    """``pid`` was spawned by this process and has not been reaped (it may have exited)."""
    return pid in _CHILDREN


def process_alive(pid: int) -> bool:
    """True for a live (non-zombie) process; reaps it first if this process started it."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` ([] if it is gone).

    Right after ``exec`` the kernel shows an empty cmdline until it has set up the new program's
    arguments; a live process with an empty one is given a moment to get past that.
    """
    deadline = time.monotonic() + _EXEC_SETTLE
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        if raw or time.monotonic() >= deadline or not process_alive(pid):
            return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        time.sleep(0.01)


def read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file``; None if it is missing, empty (being rewritten) or not a number."""
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_pid(pid_file: Path, pid: int) -> None:
    """Record ``pid`` right after spawning, so a later ``stop`` finds it even if the daemon writes none."""
    tmp = pid_file.with_name(f".{pid_file.name}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with ({} if it is gone or not readable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {key: value for key, _, value in pairs}


def running_pid(
    pid_file: Path,
    matches: Callable[[list[str]], bool],
    environ_matches: Callable[[dict[str, str]], bool] | None = None,
) -> int | None:
    """The pid in ``pid_file`` if that process is alive and is the daemon (its cmdline ``matches``, and
    its environment ``environ_matches`` when given: for daemons whose command line names nothing of
    their own, such as ``slurmdbd -D``)."""
    pid = read_pid(pid_file)
    if pid is None or not process_alive(pid):
        return None
    if is_child(pid):
        return pid  # ours and not reaped, so the pid cannot have been reused
    if not matches(cmdline(pid)):
        return None
    return pid if environ_matches is None or environ_matches(environ(pid)) else None


def died_check(pid: int, name: str, log_tail: Callable[[], str]) -> Callable[[], None]:
    """A ``check`` for :func:`wait_until` that fails as soon as the spawned ``pid`` has exited."""

    def check() -> None:
        child = _CHILDREN.get(pid)
        if not process_alive(pid):
            code = f" with status {child.returncode}" if child is not None else ""
            raise SupervisionError(f"{name} exited during startup{code}:\n{log_tail()}")

    return check


def stop_pid(pid: int, name: str, timeout: float, log: LogFn) -> None:
    """SIGTERM ``pid``, then SIGKILL after ``timeout`` seconds; returns once it is gone."""
    log(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not process_alive(pid), timeout, f"{name} to exit")
    except WaitTimeout:
        log(f"{name} ignored SIGTERM for {timeout:g} s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not process_alive(pid), 10, f"{name} to die")


async def stop_child(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """:func:`stop_pid` for an asyncio child (whose supervisor awaits it): TERM, then KILL; its status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


def log_tail(paths: Iterable[Path], lines: int = 15) -> str:
    """The last ``lines`` of each non-empty log, headed by its path; "(no log output)" if all are empty."""
    texts = []
    for path in dict.fromkeys(paths):
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                texts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(texts) or "(no log output)"
