"""``run_copy``: start the worker as the job's user, follow its reports, keep the journal, cancel.

The copy runs in a child process (``python -m slurmlink.mover.worker``) that ``Popen`` starts with
the job's uid, gid and groups when the caller is root, so the mover reads and writes exactly what the
user's own shell could; nothing is ever created as root.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from slurmlink.identity import child_argv, child_environment
from slurmlink.mover import journal as journals
from slurmlink.mover.spec import CopySpec, MoveCancelled, MoveError, MoveProgress, how_it_ended

#: How long a cancelled worker gets between SIGTERM and SIGKILL.
TERM_GRACE = 1.0
#: How often the wait for the worker's next report looks at ``cancel``.
CANCEL_POLL = 0.05


def _command(spec: CopySpec) -> list[str]:
    """The worker's command line; started by root, it takes the job's identity before anything else.

    (Not ``Popen(user=...)``: the interpreter may live where the user cannot reach it, e.g. under a
    0700 ``/root``; the worker switches ids right after start-up, before it reads a path.)
    """
    if spec.uid == 0:
        raise MoveError("copies never run as root: the movement has uid 0")
    if os.geteuid() != 0 and spec.uid != os.geteuid():
        raise MoveError(
            f"cannot copy as uid {spec.uid}: this process runs as uid {os.geteuid()} and is not root"
        )
    return child_argv("slurmlink.mover.worker", spec.uid, spec.gid, spec.groups)


def _lines(stream: IO[bytes], out: queue.Queue[bytes | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _tail(stream: IO[bytes], keep: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        keep.append(chunk)
        del keep[:-4]


class _Run:
    """One copy's bookkeeping in the parent: counts, journal, progress calls."""

    def __init__(
        self,
        spec: CopySpec,
        journal: journals.Journal | None,
        progress: Callable[[MoveProgress], None] | None,
        interval: float,
    ) -> None:
        self.spec = spec
        self.journal = journal
        self.callback = progress
        self.interval = interval
        self.state = MoveProgress()
        self.started = time.monotonic()
        self.last_call = -1e9
        self.share_bytes: dict[int, int] = {}  # each process's bytes so far
        self.skipped_bytes = 0
        self.error: str | None = None
        self.finished = False

    def handle(self, record: dict[str, Any]) -> None:
        s = self.state
        kind = record.get("t")
        if kind == "v":
            self.verified([record])
        elif kind == "vs":  # a batch of small files
            self.verified(list(record.get("files") or []))
        elif kind == "p":  # each process of a split copy counts its own bytes
            share = int(record.get("share") or 0)
            self.share_bytes[share] = max(self.share_bytes.get(share, 0), int(record["bytes"]))
        elif kind == "plan":
            s.files_total, s.bytes_total = record["files"], record["bytes"]
            s.files_skipped, self.skipped_bytes = record["skipped"], record["skipped_bytes"]
            s.directories, s.links, s.specials_skipped = (
                record["directories"],
                record["links"],
                record["specials"],
            )
            if self.journal is not None:
                self.journal.write(
                    {"t": "targets", "spec": journals.spec_key(self.spec), "targets": record["targets"]}
                )
        elif kind == "error":
            self.error = str(record.get("message"))
        elif kind == "done":
            self.finished = True
        s.bytes_done = self.skipped_bytes + sum(self.share_bytes.values())
        self.tick()

    def verified(self, records: list[dict[str, Any]]) -> None:
        s = self.state
        s.files_done += len(records)
        s.checksums_verified += sum(1 for r in records if r.get("checked"))
        if self.journal is not None:
            self.journal.write_many(records)

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        self.state.seconds = now - self.started
        copied = self.state.bytes_done - self.skipped_bytes
        self.state.rate = copied / self.state.seconds if self.state.seconds > 0 else 0.0
        if self.callback is not None and (final or now - self.last_call >= self.interval):
            self.last_call = now
            self.callback(self.state)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the worker is still there after TERM_GRACE."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_copy(
    spec: CopySpec,
    *,
    journal: Path | None = None,
    progress: Callable[[MoveProgress], None] | None = None,
    cancel: threading.Event | None = None,
    interval: float = 1.0,
) -> MoveProgress:
    """Copy ``spec`` as its user; blocks; the final counts, or MoveError / MoveCancelled.

    With ``journal`` (a file the caller can write), files verified by an earlier run of the same spec
    that are unchanged on both sides are skipped. ``progress`` is called at most every ``interval``
    seconds and once at the end.
    """
    argv = _command(spec)
    targets, done = journals.load(journal, spec) if journal is not None else (None, [])
    payload = {
        "spec": spec.to_json(),
        "done": done,
        "targets": targets,
        "interval": min(max(interval, 0.1), 1.0),
    }
    if cancel is not None and cancel.is_set():
        raise MoveCancelled("the copy was cancelled before it started")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=child_environment(),
        close_fds=True,
    )
    book = _Run(spec, journals.Journal(journal) if journal is not None else None, progress, interval)
    lines: queue.Queue[bytes | None] = queue.Queue()
    stderr: list[bytes] = []
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True),
        threading.Thread(target=_tail, args=(proc.stderr, stderr), daemon=True),
    ]
    try:
        for reader in readers:
            reader.start()
        try:
            proc.stdin.write(json.dumps(payload).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            if cancel is not None and cancel.is_set():
                _stop(proc)
                raise MoveCancelled(f"the copy of {spec.source} to {spec.destination} was cancelled")
            try:
                line = lines.get(timeout=CANCEL_POLL if cancel is not None else None)
            except queue.Empty:
                continue
            if line is None:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                book.handle(record)
        code = proc.wait()
        for reader in readers:
            reader.join()
    except BaseException:
        _stop(proc)
        raise
    finally:
        if book.journal is not None:
            book.journal.close()
    if book.error is not None:
        raise MoveError(book.error)
    if code != 0 or not book.finished:
        detail = b"".join(stderr).decode(errors="replace").strip().splitlines()[-1:] or [""]
        what = f"the copy of {spec.source} to {spec.destination} failed"
        raise MoveError(f"{what}: the copy process {how_it_ended(code)} {detail[0]}".strip())
    book.tick(final=True)
    return book.state
