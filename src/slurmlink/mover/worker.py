"""The copying process, run as the job's user: ``python -m slurmlink.mover.worker [--uid U --gid G
--groups A,B]``. Started by root, it switches to the job's ids before it reads stdin or any path.

It reads ``{"spec": ..., "done": [...], "targets": [...] | null, "interval": s}`` as JSON on stdin and
writes JSON lines on stdout: ``plan`` (totals and the targets chosen), ``v`` (one file verified),
``vs`` (a batch of them), ``p`` (bytes so far), then ``done`` or ``error``. It never touches the
journal; the parent keeps it.
SIGTERM stops it at the next buffer (temporary files removed), exit status 143.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from slurmlink.identity import become, die_with_parent, parse_identity
from slurmlink.mover.copier import Copier, Stopped, check_space
from slurmlink.mover.listfile import parse_list
from slurmlink.mover.paths import error, kind_at, open_parent
from slurmlink.mover.plan import drop_done, make_plan
from slurmlink.mover.shares import ShareFailed, run_shared, share_count
from slurmlink.mover.spec import CopySpec, MoveError
from slurmlink.mover.targets import Target, list_targets, resolve

LIST_LIMIT = 16 << 20
CANCELLED = 143


def read_list(path: str, uid: int) -> str:
    """A list file's text, read as the user and not through a final link."""
    fd, name = open_parent(path, uid)
    try:
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise error(path, exc) from exc
        with os.fdopen(f, "rb") as stream:
            data = stream.read(LIST_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > LIST_LIMIT:
        raise MoveError(f"{path}: the list is larger than {LIST_LIMIT >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise MoveError(f"{path}: the list is not UTF-8 text") from exc


def choose_targets(spec: CopySpec, uid: int) -> list[Target]:
    def kind_of(path: str) -> Any:
        return kind_at(path, uid)

    def dest_kind_of(path: str) -> Any:
        return kind_at(path, uid, follow_trusted=True)

    if spec.mode == "list":
        text = read_list(spec.source, uid)
        pairs = parse_list(text, spec.source, destination=spec.destination, buffer_side=spec.buffer_side)
        return list_targets(pairs, kind_of, dest_kind_of)
    return resolve(spec.mode, spec.source, spec.destination, kind_of, dest_kind_of)


def execute(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
    """Run one copy as whoever this process is; raises MoveError, or Stopped when ``stop`` is set."""
    spec = CopySpec.from_json(payload["spec"])
    uid = os.geteuid()
    if payload.get("targets"):
        targets = [Target(s, d, k) for s, d, k in payload["targets"]]
    else:
        targets = choose_targets(spec, uid)
    plan = make_plan(targets, uid)
    done = {r["dst"]: r for r in payload.get("done") or []}
    drop_done(plan, done, uid)
    check_space(plan, uid)
    emit(
        {
            "t": "plan",
            "targets": [[t.source, t.destination, t.kind] for t in targets],
            "files": len(plan.files) + len(plan.skipped),
            "bytes": sum(f.size for f in plan.files) + sum(f.size for f in plan.skipped),
            "skipped": len(plan.skipped),
            "skipped_bytes": sum(f.size for f in plan.skipped),
            "directories": len(plan.directories) + sum(1 for r in plan.roots if r.tree),
            "links": len(plan.links),
            "specials": len(plan.specials),
            "special_paths": plan.specials[:20],
        }
    )
    # The plan's objects live until the end: out of the collector's sight, its passes stay short and a
    # forked share does not copy the pages the collector would touch.
    gc.freeze()
    shares = share_count(plan.files)
    copier = Copier(plan, uid, -(-spec.workers // shares), spec.verify, emit, stop, in_place=spec.in_place)
    try:
        copier.prepare()
        run_shared(copier, float(payload.get("interval", 1.0)), shares)
        copier.finish()
    finally:
        copier.close()


class OutputLock:
    """One writer at a time on stdout, among this process's threads and the processes it forks: a
    thread lock, and a POSIX record lock on an anonymous file (those are held per process, so the
    forked processes exclude each other; ``multiprocessing`` would cost more to import than the copy
    of a small tree takes)."""

    def __init__(self) -> None:
        self._threads = threading.Lock()
        self._file = os.memfd_create("slurmlink-mover-output", os.MFD_CLOEXEC)

    def __enter__(self) -> None:
        self._threads.acquire()
        fcntl.lockf(self._file, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_UN)
        self._threads.release()


def main(argv: list[str]) -> int:
    identity, _ = parse_identity(argv)
    if identity is not None and identity[0] != 0:
        become(*identity)
    die_with_parent()  # after become: changing credentials clears the parent-death signal
    if os.getppid() == 1:
        return CANCELLED
    out = sys.stdout.buffer
    lock = OutputLock()  # shared with the processes of a split copy

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with lock:
            out.write(line)
            out.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if os.geteuid() == 0 or os.getuid() == 0:
        emit({"t": "error", "message": "copies never run as root"})
        return 1
    try:
        execute(json.loads(sys.stdin.buffer.read()), emit, stop)
    except Stopped:
        return CANCELLED
    except ShareFailed:
        return 1  # the process that failed has said why
    except MoveError as exc:
        if stop.is_set() and not str(exc):
            return CANCELLED
        emit({"t": "error", "message": str(exc)})
        return 1
    emit({"t": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
