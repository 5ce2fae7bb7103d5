"""Opening directories without being redirected by symbolic links.

Every directory below a copy's source or destination is opened relative to its parent's descriptor
with ``O_NOFOLLOW``, so a link planted inside either tree (say ``out/data -> /home/other``) fails the
copy instead of sending reads or writes elsewhere. In the path *leading to* a copy's root a link is
followed only if root or the copying user owns it (a site's ``/scratch -> /lus/scratch``, the user's
own link), the rule of the kernel's ``protected_symlinks``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from slurmlink.mover.spec import MoveError
from slurmlink.mover.targets import Kind

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotADirectory(MoveError):
    """A link or non-directory where a directory was needed."""


class MissingPath(MoveError):
    """A directory on the way does not exist."""


def error(path: str, exc: OSError) -> MoveError:
    """A user-facing error for ``exc`` at ``path`` ("<path>: Permission denied")."""
    return MoveError(f"{path}: {exc.strerror or exc}")


def open_child(parent: int, name: str, path: str, *, create: bool = False, mode: int = 0o700) -> int:
    """Directory ``name`` in ``parent``, never through a link; made with ``mode`` if missing and
    ``create``."""
    for _ in range(2):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, mode, dir_fd=parent)
            except FileExistsError:
                continue
            except OSError as exc:
                raise error(path, exc) from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotADirectory(_not_directory(parent, name, path)) from exc
            raise error(path, exc) from exc
    return os.open(name, DIR_FLAGS, dir_fd=parent)


def _not_directory(parent: int, name: str, path: str) -> str:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return f"{path}: Not a directory"
    if stat.S_ISLNK(st.st_mode):
        return f"{path}: is a symbolic link; it is not followed"
    return f"{path}: exists and is not a directory"


def open_path(path: str, uid: int, *, create: bool = False, mode: int = 0o777) -> int:
    """The directory at absolute ``path``; links on the way only if owned by root or ``uid``.

    With ``create`` the missing directories are made (``mkdir -p``, ``mode`` less the umask).
    """
    fd = os.open("/", DIR_FLAGS)
    done = ""
    try:
        for name in [p for p in path.split("/") if p]:
            done = f"{done}/{name}"
            try:
                child = open_child(fd, name, done, create=create, mode=mode)
            except FileNotFoundError as exc:
                raise MissingPath(f"{done}: No such file or directory") from exc
            except NotADirectory:
                child = _trusted_link(fd, name, done, uid)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _trusted_link(parent: int, name: str, path: str, uid: int) -> int:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise error(path, exc) from exc
    if not stat.S_ISLNK(st.st_mode):
        raise NotADirectory(f"{path}: exists and is not a directory")
    if st.st_uid not in (0, uid):
        raise MoveError(f"{path}: is a symbolic link owned by another user; it is not followed")
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        raise error(path, exc) from exc


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
