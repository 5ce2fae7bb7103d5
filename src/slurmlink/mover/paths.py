"""Opening directories without being redirected by symbolic links.

Every directory below a copy's source or destination is opened relative to its parent's descriptor
with ``O_NOFOLLOW``, so a link planted inside either tree (say ``out/data -> /home/other``) fails the
copy instead of sending reads or writes elsewhere. In the path *leading to* a copy's root a link is
followed only if root or the copying user owns it (a site's ``/scratch -> /lus/scratch``, the user's
own link), the rule of the kernel's ``protected_symlinks``. The walking is :mod:`slurmlink.safedirs`'s;
here its refusals become the mover's errors, and directories are opened ``O_RDONLY`` to be listed.
"""

from __future__ import annotations

import contextlib
import os
import stat

from slurmlink import safedirs
from slurmlink.mover.spec import MoveError
from slurmlink.mover.targets import Kind


class NotADirectory(MoveError):
    """A link or non-directory where a directory was needed."""


class MissingPath(MoveError):
    """A directory on the way does not exist."""


def error(path: str, exc: OSError) -> MoveError:
    """A user-facing error for ``exc`` at ``path`` ("<path>: Permission denied")."""
    return MoveError(f"{path}: {exc.strerror or exc}")


def _move_error(exc: safedirs.DirError, *, trusting: bool) -> MoveError:
    """``exc`` in the mover's words; ``trusting`` when links of root's and the user's were followed."""
    path = exc.shown
    if isinstance(exc, safedirs.DirMissing) or exc.why == safedirs.CHANGED:
        return MissingPath(f"{path}: No such file or directory")
    if exc.why == safedirs.NOT_DIRECTORY:
        return NotADirectory(f"{path}: exists and is not a directory")
    if exc.why == safedirs.LINK:
        if trusting:
            return MoveError(f"{path}: is a symbolic link owned by another user; it is not followed")
        return NotADirectory(f"{path}: is a symbolic link; it is not followed")
    if exc.why == safedirs.UNCHECKED and not trusting:
        return NotADirectory(f"{path}: Not a directory")
    assert exc.cause is not None
    return error(path, exc.cause)


def open_below(root_fd: int, rel: str, base: str, *, create: bool = False) -> int:
    """Directory ``rel`` below ``root_fd`` (which is ``base``), never through a link; made with mode
    0700 where missing if ``create``."""
    try:
        return safedirs.open_below(
            root_fd, [p for p in rel.split("/") if p], access=os.O_RDONLY, create=create, prefix=base
        )
    except safedirs.DirError as exc:
        raise _move_error(exc, trusting=False) from exc


def open_path(path: str, uid: int, *, create: bool = False, mode: int = 0o777) -> int:
    """The directory at absolute ``path``; links on the way only if owned by root or ``uid``.

    With ``create`` the missing directories are made (``mkdir -p``, ``mode`` less the umask).
    Opened ``O_RDONLY``, so that it can be listed.
    """
    try:
        return safedirs.open_absolute(
            [p for p in path.split("/") if p], access=os.O_RDONLY, trusted=(0, uid), create=create, mode=mode
        )
    except safedirs.DirError as exc:
        raise _move_error(exc, trusting=True) from exc


def open_parent(path: str, uid: int, *, create: bool = False) -> tuple[int, str]:
    """The directory holding ``path`` and the last name of ``path``."""
    head, _, name = path.rstrip("/").rpartition("/")
    return open_path(head or "/", uid, create=create), name


def kind_at(path: str, uid: int, *, follow_trusted: bool = False) -> Kind | None:
    """What is at ``path``; None when nothing, or no parent, is. A final link is not followed, but
    with ``follow_trusted`` one owned by root or ``uid`` that leads to a directory is a directory."""
    if path == "/":
        return "directory"
    try:
        fd, name = open_parent(path, uid)
    except (MissingPath, NotADirectory):
        return None
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if follow_trusted and stat.S_ISLNK(st.st_mode) and st.st_uid in (0, uid):
            with contextlib.suppress(OSError):  # a dangling link stays a link
                if stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode):
                    return "directory"
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(path, exc) from exc
    finally:
        os.close(fd)
    return kind_of_mode(st.st_mode)


def kind_of_mode(mode: int) -> Kind:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "special"


def deepest_existing(path: str, uid: int) -> int:
    """The deepest existing directory on the way to ``path`` (for its file system's free space)."""
    while True:
        try:
            return open_path(path, uid)
        except (MissingPath, NotADirectory):
            if path in ("", "/"):
                raise
            path = path.rstrip("/").rpartition("/")[0] or "/"
