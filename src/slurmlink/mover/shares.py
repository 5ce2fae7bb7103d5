"""Many small files copied by several processes: shares of the plan's files, two per CPU.

A small file costs the copier about 0.3 ms of Python (open, read, hash, write, read back, hash, mode,
times, rename), and threads share one interpreter lock: ten thousand small files kept one core busy
while the other waited. After :meth:`Copier.prepare` has made the directories, the worker forks one
process per further share; each copies its share of the small files (whole directory batches) with its
own threads, and reports its own files and bytes on the same output. Shares are dealt by estimated work
(bytes plus a fixed cost per file), so the processes finish together. Large files stay with the first
process, whose threads already copy them range by range.

A process that fails reports its error itself and the others are stopped; a cancel (SIGTERM to the
first process) is passed on to the others; if the first process dies, the kernel kills the others.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from slurmlink.identity import die_with_parent
from slurmlink.mover.copier import SPLIT_AT, Copier, Stopped, batches
from slurmlink.mover.plan import FileItem
from slurmlink.mover.spec import MoveError, how_it_ended

#: At most this many processes copy one plan.
MAX_SHARES = 4
#: Processes per CPU: while one waits for the disk (a cold source) the other works; with two CPUs, four
#: processes of two threads copied 10,000 small files 5-10 % faster than two of four.
PER_CPU = 2
#: Fewer small files than this are copied by one process: forking would cost more than it saves.
MIN_SMALL_FILES = 1000
#: A small file's fixed cost (system calls and Python), as the bytes copied in the same time.
FILE_COST = 256 << 10
#: Exit status of a share that reported its own error.
REPORTED = 1
#: Exit status of a share stopped by SIGTERM (as the worker's).
STOPPED = 143


class ShareFailed(MoveError):
    """Another process of the copy failed and has already reported why."""


def share_count(files: list[FileItem]) -> int:
    """How many processes should copy ``files``: PER_CPU per CPU this process may run on, when many are
    small."""
    small = sum(1 for f in files if f.size < SPLIT_AT)
    if small < MIN_SMALL_FILES:
        return 1
    return max(1, min(MAX_SHARES, PER_CPU * len(os.sched_getaffinity(0))))


def split(files: list[FileItem], shares: int) -> list[list[FileItem]]:
    """Large files to the first share; small files by directory batch, each to the share with the
    least work so far (a file's fixed cost counted as FILE_COST bytes)."""
    large, small = batches(files)
    out: list[list[FileItem]] = [list(large)] + [[] for _ in range(max(1, shares) - 1)]
    work = [sum(f.size for f in large)] + [0] * (len(out) - 1)
    for batch in small:
        least = work.index(min(work))
        out[least].extend(batch)
        work[least] += sum(FILE_COST + f.size for f in batch)
    return out


def run_shared(copier: Copier, interval: float, shares: int) -> None:
    """``copier.run`` over the plan's files in ``shares`` processes; raises as ``run`` does, or
    :class:`ShareFailed` when another process failed (it said why)."""
    parts = split(copier.plan.files, shares)
    if len(parts) == 1:
        copier.run(interval)
        return
    children: dict[int, int | None] = {}  # pid -> exit code once it ended
    parent = os.getpid()
    # A thread waits for the processes, not a SIGCHLD handler: a handler setting ``stop`` could run
    # while this thread holds the event's lock, and wait for it forever.
    reaper = threading.Thread(target=_reap, args=(children, copier.stop), name="shares", daemon=True)
    try:
        for index, files in enumerate(parts[1:], start=1):
            pid = os.fork()  # before any thread of this process is started
            if pid == 0:  # pragma: no cover - the child's coverage is not collected
                os._exit(_child(copier, parent, index, files, interval))
            children[pid] = None
        reaper.start()
        with contextlib.suppress(Stopped):  # below: why, and whether the others stopped too
            copier.run(interval, parts[0])
        while reaper.is_alive() and not copier.stop.is_set():
            reaper.join(0.05)
    finally:
        for pid, code in list(children.items()):
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        if reaper.ident is not None:  # started
            reaper.join()
        else:  # a fork failed: no thread waits for those already forked
            _reap(children, copier.stop)
    _outcome(copier, list(children.values()))


def _reap(children: dict[int, int | None], stop: threading.Event) -> None:
    """Wait for every process in ``children``, recording its exit code; one that failed stops the copy."""
    while None in children.values():
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid in children:
            children[pid] = os.waitstatus_to_exitcode(status)
            if children[pid] != 0:
                stop.set()  # one failed (or was stopped): the copy has failed, the others stop


def _outcome(copier: Copier, codes: list[int | None]) -> None:
    if copier.error is not None:
        raise copier.error
    if REPORTED in codes:
        raise ShareFailed("")
    others = [c for c in codes if c not in (0, STOPPED)]
    if others:
        raise MoveError(f"a copying process {how_it_ended(others[0] or 0)}")
    if copier.stop.is_set():
        raise Stopped


def _child(copier: Copier, parent: int, index: int, files: list[FileItem], interval: float) -> int:
    """One further share, in the forked process; its exit status."""
    try:
        die_with_parent()
        if os.getppid() != parent:  # the first process died before the line above
            return STOPPED
        copier.share = index
        copier.bytes_done = 0
        copier.run(interval, files)
    except Stopped:
        return STOPPED
    except MoveError as exc:
        copier.emit({"t": "error", "message": str(exc)})
        return REPORTED
    except BaseException as exc:  # nothing may escape into the code of the process it was forked from
        with contextlib.suppress(BaseException):
            copier.emit({"t": "error", "message": f"a copying process failed: {exc!r}"})
        return REPORTED
    return 0
