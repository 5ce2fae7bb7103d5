"""The copy process: ``python -m slurmlink.mover.worker``, started by :func:`slurmlink.mover.run_copy`.

It reads one JSON request on stdin (the spec, the files a previous run verified, the progress
interval), **drops to the job's uid, gid and groups before touching any path** (when started as
root), asks the kernel to kill it if its parent dies (so a killed agent leaves no copy running), and
reports on stdout, one JSON object per line: ``{"t": "targets", ...}`` (where each source goes, for the
journal), ``{"t": "p", ...progress}`` now and then, ``{"t": "v", ...}`` for each file verified (the
journal), then ``{"t": "end", ...progress}`` or ``{"t":
"err", "message": ...}``. SIGTERM stops it at the next chunk.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
from typing import Any

from slurmlink.mover.copier import Copier, Verified
from slurmlink.mover.plan import build
from slurmlink.mover.spec import CopySpec, MoveCancelled, MoveError

_PR_SET_PDEATHSIG = 1


def drop_privileges(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """Become the job's user for good (no way back to root), or fail."""
    if os.geteuid() != 0:
        if uid != os.geteuid():
            raise MoveError(f"cannot copy as uid {uid}: the mover runs as uid {os.geteuid()}, not root")
        return
    if uid <= 0 or gid < 0:
        raise MoveError("copies never run as root")
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise MoveError("could not drop root privileges")  # pragma: no cover


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the agent that started us dies (set after the uid change, which clears it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class _Out:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"t": kind, **fields}, separators=(",", ":")) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def main() -> int:
    parent = os.getppid()
    out = _Out()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        request = json.loads(sys.stdin.read())
        spec = CopySpec.from_json(request["spec"])
        skip: dict[str, Verified] = {k: tuple(v) for k, v in (request.get("skip") or {}).items()}
        interval = float(request.get("interval") or 1.0)
        os.chdir("/")
        drop_privileges(spec.uid, spec.gid, spec.groups)
        _die_with_parent(parent)
        os.umask(0o022)
        plan = build(spec, request.get("targets"))
        out.send("targets", targets=plan.targets)  # before anything exists: a rerun chooses the same

        def verified(dst: str, record: Verified) -> None:
            out.send("v", dst=dst, r=list(record))

        copier = Copier(
            plan, workers=spec.workers, verify=spec.verify, skip=skip, on_verified=verified, stop=stop
        )
        out.send("p", **copier.snapshot().to_json())
        finished = threading.Event()

        def report() -> None:
            while not finished.wait(interval):
                out.send("p", **copier.snapshot().to_json())

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            final = copier.run()
        finally:
            finished.set()
        out.send("end", **final.to_json())
        return 0
    except MoveCancelled as exc:
        out.send("err", message=str(exc), cancelled=True)
        return 3
    except MoveError as exc:
        out.send("err", message=str(exc))
        return 2
    except Exception as exc:  # a bug: say what it was, as the user will see it
        out.send("err", message=f"the copy failed unexpectedly: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
