"""Running one copy: a worker process as the job's user, its progress, its journal, cancelling it.

The caller (a storage node's agent, as root) keeps the journal: one JSON line per file the worker
verified, appended and flushed as it reports them, so a kill -9 of the agent loses at most the line
being written (a torn last line is ignored when read back). A rerun of the same copy with the same
journal hands the verified files to the new worker, which skips those still unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slurmlink.mover.copier import Verified
from slurmlink.mover.spec import MODES, CopySpec, MoveCancelled, MoveError, MoveProgress

#: After SIGTERM, how long the worker gets before SIGKILL.
TERM_GRACE = 1.0


def read_journal(path: Path | None) -> tuple[dict[str, Verified], list[str] | None]:
    """What a journal records: the verified files (destination path -> record), and where the first
    run sent each source (None if it never got that far)."""
    found: dict[str, Verified] = {}
    targets: list[str] | None = None
    if path is None:
        return found, targets
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return found, targets
    for line in lines:
        try:
            entry = json.loads(line)
            if "targets" in entry:
                targets = [str(t) for t in entry["targets"]]
            else:
                found[str(entry["dst"])] = tuple(entry["r"])
        except (ValueError, KeyError, TypeError):
            continue  # the line being written when the agent died
    return found, targets


def run_copy(
    spec: CopySpec,
    *,
    journal: Path | None = None,
    progress: Callable[[MoveProgress], None] | None = None,
    cancel: threading.Event | None = None,
    interval: float = 1.0,
) -> MoveProgress:
    """Copy as ``spec`` says, in a worker process with the job's ids; blocks until done.

    Returns the final counts; raises MoveCancelled if ``cancel`` was set first, MoveError with the
    worker's message otherwise.
    """
    if spec.uid == 0:
        raise MoveError("copies never run as root")
    if spec.uid < 0 or spec.gid < 0:
        raise MoveError("a copy needs the job's uid and gid")
    if spec.mode not in MODES:
        raise MoveError(f"unknown copy mode {spec.mode!r}: use auto, file, directory or list")
    if os.geteuid() != 0 and spec.uid != os.geteuid():
        raise MoveError(f"cannot copy as uid {spec.uid} without root")
    skip, targets = read_journal(journal)
    request = {"spec": spec.to_json(), "skip": skip, "targets": targets, "interval": interval}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurmlink.mover.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        cwd="/",
    )
    cancelled = threading.Event()
    done = threading.Event()
    stderr: list[bytes] = []
    threading.Thread(
        target=lambda: stderr.append(proc.stderr.read() if proc.stderr else b""), daemon=True
    ).start()
    if cancel is not None:
        threading.Thread(target=_stop_on, args=(cancel, done, cancelled, proc), daemon=True).start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        final, message = _follow(proc.stdout, journal, progress, interval)
        proc.wait()
    finally:
        done.set()
        if proc.poll() is None:
            _kill(proc)
    if cancelled.is_set() and final is None:
        raise MoveCancelled("cancelled")
    if message is not None:
        raise MoveError(message)
    if final is None or proc.returncode != 0:
        tail = b"".join(stderr).decode(errors="replace").strip().splitlines()[-3:]
        raise MoveError(
            f"the copy stopped unexpectedly (exit status {proc.returncode})"
            + (": " + " ".join(tail) if tail else "")
        )
    if progress is not None:
        progress(final)
    return final


def _follow(
    stdout: Any,
    journal: Path | None,
    progress: Callable[[MoveProgress], None] | None,
    interval: float,
) -> tuple[MoveProgress | None, str | None]:
    """Read the worker's reports until it ends: (final counts, None) or (None, its error)."""
    final: MoveProgress | None = None
    message: str | None = None
    last_report = 0.0
    log = journal.open("a", encoding="utf-8") if journal is not None else None
    try:
        for raw in stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.pop("t", None)
            if kind in ("v", "targets") and log is not None:
                log.write(json.dumps(event, separators=(",", ":")) + "\n")
                log.flush()
            elif kind == "p" and progress is not None:
                now = time.monotonic()
                if now - last_report >= interval * 0.5:
                    last_report = now
                    progress(MoveProgress.from_json(event))
            elif kind == "end":
                final = MoveProgress.from_json(event)
            elif kind == "err":
                message = str(event.get("message") or "the copy failed")
                if event.get("cancelled"):
                    message = None
    finally:
        if log is not None:
            log.close()
    return final, message


def _stop_on(
    cancel: threading.Event, done: threading.Event, cancelled: threading.Event, proc: subprocess.Popen[bytes]
) -> None:
    while not done.is_set():
        if cancel.wait(0.1):
            cancelled.set()
            _kill(proc)
            return


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, SIGKILL after TERM_GRACE."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(TERM_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
