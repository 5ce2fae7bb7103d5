"""Acting as a Unix user: helper processes that root starts and that become the user right away.

The data mover and the job bridge both touch files for users while running as root. They never do it
as root: they start ``python -m <module> --uid U --gid G --groups A,B`` and the child calls
:func:`become` before it reads a path, so the kernel checks every access against the user's own
permissions (a link to ``/etc/shadow`` gives nothing). Not ``Popen(user=...)``: the interpreter may
live where the user cannot reach it (a 0700 ``/root``), so the ids change after start-up instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import sys
from collections.abc import Sequence


def supplementary_groups(uid: int, gid: int, login: str | None = None) -> tuple[int, ...]:
    """The user's supplementary groups, as their login shell would have them, without ``gid``.

    ``login`` saves a lookup when known; an account this host does not know has none.
    """
    try:
        name = login if login is not None else pwd.getpwuid(uid).pw_name
        return tuple(g for g in os.getgrouplist(name, gid) if g != gid)
    except (KeyError, OSError):
        return ()


def become(uid: int, gid: int, groups: Sequence[int]) -> None:
    """Take the user's identity for good (real, effective and saved ids), then prove root is gone."""
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("the helper process could not give up root")


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (PR_SET_PDEATHSIG).

    Call it after :func:`become`: changing credentials clears the parent-death signal.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def child_argv(module: str, uid: int, gid: int, groups: Sequence[int]) -> list[str]:
    """``python -m module``, with the ids to take when this process is root.

    The caller checks first that it may act as ``uid`` at all (not root: only as itself). ``-S``: the
    child does not process ``site`` and its ``.pth`` files (tens of milliseconds per start, paid by
    every copy); :func:`child_environment` gives it this process's import path instead.
    """
    argv = [sys.executable, "-S", "-m", module]
    if os.geteuid() != 0:
        return argv
    return [*argv, "--uid", str(uid), "--gid", str(gid), "--groups", ",".join(str(g) for g in groups)]


def parse_identity(argv: list[str]) -> tuple[tuple[int, int, list[int]] | None, list[str]]:
    """``--uid U --gid G --groups A,B`` at the start of ``argv`` (None if absent), and the rest."""
    values: dict[str, str] = {}
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("--uid", "--gid", "--groups"):
        values[rest[0]] = rest[1]
        rest = rest[2:]
    if not values:
        return None, rest
    groups = [int(g) for g in values.get("--groups", "").split(",") if g]
    return (int(values["--uid"]), int(values["--gid"]), groups), rest


def child_environment() -> dict[str, str]:
    """This environment, with this very ``slurmlink`` first on the child's import path and then this
    process's whole import path (``site`` already ran here; the child, started with ``-S``, does not
    run it)."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    path = [here, *(p for p in sys.path if os.path.isabs(p) and p != here)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}
