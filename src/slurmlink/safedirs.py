"""Opening directories without being redirected by symbolic links.

Each directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a link planted on
the way fails the open instead of sending it elsewhere. A link is followed only if its owner is one of
the ``trusted`` uids (a site's ``/scratch -> /lus/scratch`` owned by root, a user's own link): the rule
of the kernel's ``protected_symlinks``.

Used by the mover and by the bridge's helper process, which runs as a job's owner: standard library
only, so that nothing more need be loaded once the helper has dropped root. The errors are neutral
(:class:`DirMissing`, :class:`DirRefused`); each caller words them for its own users.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Sequence

#: Why a directory was refused (:attr:`DirRefused.why`).
NOT_DIRECTORY = "exists and is not a directory"
#: A symbolic link whose owner is not trusted.
LINK = "is a symbolic link"
#: The open met a link or a non-directory, which could then not be looked at (``cause`` says why).
UNCHECKED = "could not be looked at"
#: Opening or making the directory failed (``cause`` says why).
FAILED = "failed"
#: The directory kept vanishing while being created.
CHANGED = "changed while being created"

ATTEMPTS = 3


class DirError(Exception):
    """A directory on the way could not be opened: ``shown`` is its path as users see it."""

    def __init__(self, shown: str, why: str, cause: OSError | None = None) -> None:
        super().__init__(f"{shown}: {why}")
        self.shown = shown
        self.why = why
        self.cause = cause


class DirMissing(DirError):
    """A directory on the way does not exist (and was not to be made)."""


class DirRefused(DirError):
    """A directory on the way is refused or failed to open; ``why`` is one of the constants above."""


def _as_is(path: str) -> str:
    return path


def open_dir(
    parent: int,
    name: str,
    shown: str,
    *,
    access: int,
    trusted: tuple[int, ...] = (),
    create: bool = False,
    mode: int = 0o700,
) -> int:
    """Directory ``name`` in ``parent`` opened with ``access`` (``O_RDONLY`` to list it, ``O_PATH`` to
    pass through it); made with ``mode`` if missing and ``create``; a link only if its owner is in
    ``trusted``."""
    flags = access | os.O_DIRECTORY | os.O_CLOEXEC
    for _ in range(ATTEMPTS):
        try:
            return os.open(name, flags | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError as exc:
            if not create:
                raise DirMissing(shown, "no such directory", exc) from exc
            try:
                os.mkdir(name, mode, dir_fd=parent)
            except FileExistsError:
                pass
            except OSError as exc2:
                raise DirRefused(shown, FAILED, exc2) from exc2
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise DirRefused(shown, FAILED, exc) from exc
            return _through_link(parent, name, shown, flags, trusted)
    raise DirRefused(shown, CHANGED)


def _through_link(parent: int, name: str, shown: str, flags: int, trusted: tuple[int, ...]) -> int:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise DirRefused(shown, UNCHECKED, exc) from exc
    if not stat.S_ISLNK(st.st_mode):
        raise DirRefused(shown, NOT_DIRECTORY)
    if st.st_uid not in trusted:
        raise DirRefused(shown, LINK)
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        raise DirRefused(shown, FAILED, exc) from exc


def open_below(
    base: int,
    names: Sequence[str],
    *,
    access: int,
    trusted: tuple[int, ...] = (),
    final_link: bool = True,
    create: bool = False,
    mode: int = 0o700,
    prefix: str = "",
    show: Callable[[str], str] = _as_is,
) -> int:
    """The directory ``names`` below ``base``, one :func:`open_dir` a step; a new descriptor, ``base``
    stays open. The last step is never a link unless ``final_link``. Errors name ``show`` of the path
    walked so far, ``prefix`` joined with the names."""
    fd = os.dup(base)
    path = prefix
    try:
        for k, name in enumerate(names):
            path = posixpath.join(path, name) if path else name
            allowed = trusted if final_link or k < len(names) - 1 else ()
            child = open_dir(fd, name, show(path), access=access, trusted=allowed, create=create, mode=mode)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_absolute(
    names: Sequence[str],
    *,
    access: int,
    trusted: tuple[int, ...] = (),
    final_link: bool = True,
    create: bool = False,
    mode: int = 0o700,
) -> int:
    """The directory ``/names[0]/names[1]/...``: :func:`open_below` from ``/``."""
    root = os.open("/", access | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return open_below(
            root,
            names,
            access=access,
            trusted=trusted,
            final_link=final_link,
            create=create,
            mode=mode,
            prefix="/",
        )
    finally:
        os.close(root)
