"""The bridge's helper process: one file operation for a job, run as the job's owner.

``python -m slurmlink.bridge.asuser [--uid U --gid G --groups A,B] OP``. Started by root, it takes the
owner's ids before it reads anything (:func:`slurmlink.identity.become`); started by anyone else it
acts as itself, and it never acts as root. Its arguments are one JSON object on the first line of
stdin (not argv, which every user may read in ``/proc``); data follows on stdin (``write``,
``unpack``) or comes back on stdout (``read``; the JSON results of the others). A refusal is one JSON
line ``{"error": ..., "missing": bool}`` on stderr and exit status :data:`REFUSED`; any other
non-zero status is a crash. SIGTERM stops it with its temporary files removed (status 143).

Every path inside a job directory is opened one component at a time, relative to its parent's
descriptor and with ``O_NOFOLLOW``, so a link planted anywhere in it redirects nothing. On the way to
an absolute path (the job directory, a host path) a link is followed only if root owns it (or, for
the user's own host paths, the user): the kernel's ``protected_symlinks`` rule.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import posixpath
import secrets
import select
import signal
import stat
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from slurmlink import safedirs
from slurmlink.bridge.paths import (
    LINK_REFUSED,
    REFUSED,
    CollectedFile,
    FileMissing,
    FilesError,
    Globs,
    UnpackLimits,
    check_name,
    check_ratio,
    entry_error,
    entry_parts,
    quoted,
    relative_parts,
    zip_entry_kind,
)
from slurmlink.identity import become, die_with_parent, parse_identity

#: Exit status after SIGTERM.
CANCELLED = 143
#: How often a followed file is looked at again when it has no new data.
FOLLOW_POLL = 0.5

HEADER_LIMIT = 1 << 20
BUFFER = 1 << 20
#: Directories on a walk (:mod:`slurmlink.safedirs`) are opened O_PATH: that needs only search
#: permission on them, as a path needs (``<root>`` is 0711), and the descriptor serves as the
#: ``dir_fd`` of the next step.
WALK = os.O_PATH
#: Directories to list or change.
LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Regular files are opened non-blocking so that a FIFO in their place cannot hang the helper.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Cancelled(BaseException):
    """SIGTERM arrived: unwind, removing temporary files on the way."""


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _fail(shown: str, exc: OSError) -> FilesError:
    if isinstance(exc, FileNotFoundError):
        return FileMissing(f"{shown}: no such file or directory")
    return FilesError(f"{shown}: {_why(exc)}")


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


# -- opening directories ------------------------------------------------------------------------


def _files_error(exc: safedirs.DirError) -> FilesError:
    """``exc`` in the helper's words."""
    if isinstance(exc, safedirs.DirMissing):
        return FileMissing(f"{exc.shown}: no such directory")
    if exc.why == safedirs.NOT_DIRECTORY:
        return FilesError(f"{exc.shown}: exists and is not a directory")
    if exc.why == safedirs.LINK:
        return FilesError(f"{exc.shown}: is a symbolic link; it is not followed")
    if exc.why == safedirs.CHANGED:
        return FilesError(f"{exc.shown}: changed while being created")
    assert exc.cause is not None  # the other reasons carry the OSError behind them
    return _fail(exc.shown, exc.cause)


def _open_step(parent: int, name: str, shown: str) -> int:
    """Directory ``name`` in ``parent``, never a link."""
    try:
        return safedirs.open_dir(parent, name, shown, access=WALK)
    except safedirs.DirError as exc:
        raise _files_error(exc) from None


def open_absolute(
    path: str, *, trusted: tuple[int, ...], create: bool = False, mode: int = 0o755, final_link: bool = True
) -> int:
    """The directory at absolute ``path``; links on the way only if owned by ``trusted``, the last
    component never a link unless ``final_link``. With ``create``, missing directories are made."""
    if not path.startswith("/"):
        raise FilesError(f"{quoted(path)}: must be an absolute path")
    names = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in names:
        raise FilesError(f"{quoted(path)}: must not contain '..'")
    try:
        return safedirs.open_absolute(
            names, access=WALK, trusted=trusted, final_link=final_link, create=create, mode=mode
        )
    except safedirs.DirError as exc:
        raise _files_error(exc) from None


def open_job_dir(path: str) -> int:
    """The job directory: links on the way only if root's, the directory itself never a link."""
    try:
        return open_absolute(path, trusted=(0,), final_link=False)
    except FileMissing as exc:
        raise FileMissing(f"the job directory {path} does not exist ({exc})") from None


def open_relative(base: int, parts: list[str], *, create: bool = False, shown_prefix: str = "") -> int:
    """The directory ``parts`` below ``base`` (a new descriptor), never through a link; with
    ``create``, missing ones are made with mode 0700."""
    try:
        return safedirs.open_below(
            base, parts, access=WALK, create=create, mode=0o700, prefix=shown_prefix, show=quoted
        )
    except safedirs.DirError as exc:
        raise _files_error(exc) from None


def _host_trusted() -> tuple[int, ...]:
    return (0, os.geteuid())


# -- small file pieces --------------------------------------------------------------------------


def _temp_name(kind: str) -> str:
    return f".slurmlink-{kind}-{secrets.token_hex(6)}"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_fd(src: int, dst: int) -> int:
    total = 0
    while chunk := os.read(src, BUFFER):
        _write_all(dst, chunk)
        total += len(chunk)
    return total


def remove_tree(parent: int, name: str) -> None:
    """``rm -rf parent/name`` without following any link; directories of ours we may not write are
    made writable first. Missing is fine."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
        return
    first = _open_for_removal(parent, name)
    if first is None:
        return
    stack: list[tuple[int, str, int, list[str]]] = [(parent, name, first, os.listdir(first))]
    try:
        while stack:
            up, dname, fd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(dname, dir_fd=up)
                continue
            child = names.pop()
            try:
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                sub = _open_for_removal(fd, child)
                if sub is not None:
                    stack.append((fd, child, sub, os.listdir(sub)))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def _open_for_removal(parent: int, name: str) -> int | None:
    """A directory to empty, made readable and writable for us if we own it; None if it went away
    (a link in its place is unlinked)."""
    for _ in range(2):
        try:
            fd = os.open(name, LIST_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=parent)
                return None
            if exc.errno != errno.EACCES:
                raise
            # A directory of ours without read permission: chmod it through an O_PATH descriptor,
            # which names the directory itself (never a link) and needs no permission on it.
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
            finally:
                os.close(path_fd)
            continue
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        return fd
    raise FilesError(f"{quoted(name)}: cannot be opened for removal")


def _replace(parent: int, temp: str, name: str) -> None:
    """Put ``temp`` in place of ``name`` in ``parent``: a file or link there is replaced atomically,
    a directory is moved aside first and removed after."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        return
    aside = _temp_name("old")
    os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    remove_tree(parent, aside)


# -- operations ---------------------------------------------------------------------------------


def op_mkdir(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """The job directory itself, mode 0700, in the user's own directory (which root made)."""
    name = check_name(args["name"], "job directory name")
    shown = posixpath.join(args["parent"], name)
    with _closing(open_absolute(args["parent"], trusted=(0,), final_link=False)) as parent:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _fail(shown, exc) from exc
        with _closing(_open_step(parent, name, shown)) as fd:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise FilesError(f"{shown}: belongs to uid {st.st_uid}, not to uid {os.geteuid()}")
    return {"path": shown}


def op_write(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """stdin into a new file, swapped into place only once complete, within size and digest."""
    rel = str(args["path"])
    parts = relative_parts(rel, "file")
    limit, expected, mode = args.get("max_bytes"), args.get("sha256"), int(args.get("mode", 0o600))
    with (
        _closing(open_job_dir(args["dir"])) as job,
        _closing(open_relative(job, parts[:-1], create=True)) as parent,
    ):
        temp = _temp_name("write")
        try:
            fd = os.open(temp, NEW_FILE, 0o600, dir_fd=parent)
        except OSError as exc:
            raise _fail(quoted(rel), exc) from exc
        done = False
        try:
            digest, size = hashlib.sha256(), 0
            with _closing(fd):
                while chunk := stdin.read1(BUFFER):  # type: ignore[attr-defined]
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise FilesError(f"{quoted(rel)}: the data is larger than the {limit} bytes allowed")
                    digest.update(chunk)
                    _write_all(fd, chunk)
                if expected is not None and digest.hexdigest() != expected:
                    raise FilesError(
                        f"{quoted(rel)}: the data's SHA-256 is {digest.hexdigest()},"
                        f" not the {expected} expected"
                    )
                os.fchmod(fd, mode)
                os.fsync(fd)
            try:
                os.rename(temp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            except IsADirectoryError:
                raise FilesError(f"{quoted(rel)}: a directory is there") from None
            done = True
            os.fsync(listable := os.open(".", LIST_FLAGS, dir_fd=parent))
            os.close(listable)
        except OSError as exc:
            raise _fail(quoted(rel), exc) from exc
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
    return {"size": size, "sha256": digest.hexdigest()}


def op_unpack(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """An archive from stdin, unpacked into a private directory first and merged in only if every
    entry was fine: a refusal leaves nothing behind."""
    limits = UnpackLimits.from_json(args["limits"])
    to_parts = relative_parts(str(args["to"]), "unpack destination", allow_empty=True)
    with (
        _closing(open_job_dir(args["dir"])) as job,
        _closing(open_relative(job, to_parts, create=True)) as to,
    ):
        staging = _temp_name("unpack")
        os.mkdir(staging, 0o700, dir_fd=to)
        try:
            with _closing(os.open(staging, LIST_FLAGS, dir_fd=to)) as stage:
                if args["format"] == "zip":
                    count = _unzip(stdin, stage, limits)
                else:
                    count = _untar(stdin, stage, limits)
                prefix = "/".join(to_parts)
                _merge(stage, to, prefix, check=True)
                _merge(stage, to, prefix, check=False)
        finally:
            with contextlib.suppress(OSError):
                remove_tree(to, staging)
    return {"entries": count}


def _entry_dir(stage: int, parts: list[str], name: str) -> int:
    try:
        return open_relative(stage, parts, create=True)
    except FilesError as exc:
        raise entry_error(name, f"cannot be unpacked: {exc}") from None


def _entry_file(
    stage: int, parts: list[str], name: str, source: IO[bytes], executable: bool, room: int
) -> int:
    """One file entry written below ``stage``; its size, at most ``room`` bytes. Errors of the
    archive's own (a damaged stream) pass as they are; errors writing become the entry's."""
    mode = 0o700 if executable else 0o600
    with _closing(_entry_dir(stage, parts[:-1], name)) as parent:
        leaf = parts[-1]
        try:
            for _ in range(2):
                try:
                    fd = os.open(leaf, NEW_FILE, mode, dir_fd=parent)
                    break
                except FileExistsError:  # a later entry of the same name wins, as with tar itself
                    st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        raise entry_error(name, "the archive has a directory of that name too") from None
                    os.unlink(leaf, dir_fd=parent)
            else:
                raise entry_error(name, "cannot be created")
        except OSError as exc:
            raise entry_error(name, f"cannot be created: {_why(exc)}") from exc
        size = 0
        with _closing(fd):
            while chunk := source.read(BUFFER):
                size += len(chunk)
                if size > room:
                    raise FilesError("the input archive holds more bytes than allowed")
                try:
                    _write_all(fd, chunk)
                except OSError as exc:
                    raise entry_error(name, f"cannot be written: {_why(exc)}") from exc
            os.fchmod(fd, mode)
    return size


def _untar(stdin: IO[bytes], stage: int, limits: UnpackLimits) -> int:
    written = total = seen = 0
    try:
        with tarfile.open(fileobj=stdin, mode="r|*") as archive:
            for member in archive:
                seen += 1
                if seen > limits.max_entries:
                    raise FilesError(f"the input archive has more than {limits.max_entries} entries")
                name = member.name
                parts = entry_parts(name)
                if member.issym() or member.islnk():
                    raise entry_error(name, LINK_REFUSED)
                if member.isdir():
                    if parts:
                        os.close(_entry_dir(stage, parts, name))
                        written += 1
                    continue
                if member.ischr() or member.isblk() or member.isfifo():
                    raise entry_error(name, "a device or FIFO is refused")
                if not member.isreg():
                    raise entry_error(name, "only files and directories may be unpacked")
                if not parts:
                    raise entry_error(name, "a file needs a name")
                if total + member.size > limits.max_bytes:
                    raise FilesError(
                        f"input archive entry {quoted(name)}: the archive holds more than the"
                        f" {limits.max_bytes} bytes allowed"
                    )
                source = archive.extractfile(member)
                assert source is not None
                total += _entry_file(
                    stage, parts, name, source, bool(member.mode & 0o100), limits.max_bytes - total
                )
                written += 1
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib, lzma, bz2: ValueError/OSError
        raise FilesError(f"the input archive is not a readable tar archive: {exc}") from exc
    return written


def _unzip(stdin: IO[bytes], stage: int, limits: UnpackLimits) -> int:
    # zip needs to seek: spool stdin into an unlinked file of the user's, in the staging directory.
    spool_name = _temp_name("zip")
    fd = os.open(
        spool_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=stage
    )
    os.unlink(spool_name, dir_fd=stage)
    with os.fdopen(fd, "w+b") as spool:
        size = 0
        while chunk := stdin.read1(BUFFER):  # type: ignore[attr-defined]
            size += len(chunk)
            if size > limits.max_bytes:
                raise FilesError(f"the input archive is larger than the {limits.max_bytes} bytes allowed")
            spool.write(chunk)
        spool.seek(0)
        try:
            archive = zipfile.ZipFile(spool)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise FilesError(f"the input archive is not a readable zip archive: {exc}") from exc
        with archive:
            return _unzip_entries(archive, stage, limits)


def _unzip_entries(archive: zipfile.ZipFile, stage: int, limits: UnpackLimits) -> int:
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise FilesError(f"the input archive has more than {limits.max_entries} entries ({len(entries)})")
    plan: list[tuple[zipfile.ZipInfo, list[str], str]] = []
    total = compressed = 0
    for info in entries:  # everything is judged before anything is inflated
        name = info.filename
        parts = entry_parts(name)
        kind = zip_entry_kind(name, info.external_attr)
        if info.flag_bits & 0x1:
            raise entry_error(name, "encrypted entries are not supported")
        if kind == "file":
            if not parts:
                raise entry_error(name, "a file needs a name")
            check_ratio(f"input archive entry {quoted(name)}", info.file_size, info.compress_size, limits)
            total += info.file_size
            compressed += info.compress_size
        plan.append((info, parts, kind))
    if total > limits.max_bytes:
        raise FilesError(f"the input archive holds {total} bytes, more than the {limits.max_bytes} allowed")
    check_ratio("the input archive", total, compressed, limits)
    written = done = 0
    for info, parts, kind in plan:
        if kind == "directory":
            if parts:
                os.close(_entry_dir(stage, parts, info.filename))
                written += 1
            continue
        executable = bool((info.external_attr >> 16) & 0o100)
        try:
            with archive.open(info) as source:
                done += _entry_file(stage, parts, info.filename, source, executable, limits.max_bytes - done)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise entry_error(info.filename, f"cannot be read: {exc}") from exc
        written += 1
    return written


def _merge(src: int, dst: int, prefix: str, *, check: bool) -> None:
    """Move what ``src`` holds into ``dst``, merging directories; with ``check``, only find clashes
    (a file where the archive has a directory, or the other way round), moving nothing."""
    for name in sorted(os.listdir(src)):
        shown = posixpath.join(prefix, name) if prefix else name
        src_dir = stat.S_ISDIR(os.stat(name, dir_fd=src, follow_symlinks=False).st_mode)
        try:
            there = os.stat(name, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is None:
            if not check:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        elif src_dir and stat.S_ISDIR(there.st_mode):
            with (
                _closing(os.open(name, LIST_FLAGS, dir_fd=src)) as sub_src,
                _closing(_open_step(dst, name, quoted(shown))) as sub_dst,
            ):
                _merge(sub_src, sub_dst, shown, check=check)
        elif src_dir:
            what = "a symbolic link" if stat.S_ISLNK(there.st_mode) else "a file"
            raise FilesError(f"{quoted(shown)}: the archive has a directory there, the job directory {what}")
        elif stat.S_ISDIR(there.st_mode):
            raise FilesError(f"{quoted(shown)}: the archive has a file there, the job directory a directory")
        elif not check:
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)  # replaces a file, or a link itself


def op_copy_in(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """A host file or tree the user may read, into the job directory."""
    source = str(args["source"])
    if not source.startswith("/"):
        raise FilesError(f"input {quoted(source)}: must be an absolute path")
    head, base = posixpath.split(source.rstrip("/"))
    if not base:
        raise FilesError(f"input {quoted(source)}: names no file")
    name = check_name(args.get("name") or base, "input name")
    to_parts = relative_parts(str(args["to"]), "input destination", allow_empty=True)
    with (
        _closing(open_absolute(head or "/", trusted=_host_trusted())) as src_parent,
        _closing(open_job_dir(args["dir"])) as job,
        _closing(open_relative(job, to_parts, create=True)) as to,
    ):
        # The source itself may be a link of root's or the user's own (their name for their data).
        try:
            st = os.stat(base, dir_fd=src_parent, follow_symlinks=False)
        except OSError as exc:
            raise _fail(source, exc) from exc
        follow = stat.S_ISLNK(st.st_mode) and st.st_uid in _host_trusted()
        _copy(src_parent, base, source, to, name, follow=follow)
    return {}


def op_copy_out(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """A file or tree of the job directory to a host path; ``create`` makes its directory."""
    rel = str(args["from"])
    parts = relative_parts(rel, "results path", allow_empty=True)
    dest = str(args["dest"])
    if not dest.startswith("/"):
        raise FilesError(f"results destination {quoted(dest)}: must be an absolute path")
    head, base = posixpath.split(dest.rstrip("/"))
    check_name(base, "results destination")
    job_path = str(args["dir"])
    with contextlib.ExitStack() as stack:
        if parts:
            job = stack.enter_context(_closing(open_job_dir(job_path)))
            src_parent = stack.enter_context(_closing(open_relative(job, parts[:-1])))
            src_name = parts[-1]
        else:  # the whole job directory
            job_head, src_name = posixpath.split(job_path.rstrip("/"))
            src_parent = stack.enter_context(_closing(open_absolute(job_head or "/", trusted=(0,))))
        dest_parent = stack.enter_context(
            _closing(open_absolute(head or "/", trusted=_host_trusted(), create=bool(args["create"])))
        )
        _copy(src_parent, src_name, quoted(rel), dest_parent, base, follow=False)
    return {}


def _copy(
    src_parent: int, src_name: str, shown: str, dst_parent: int, dst_name: str, *, follow: bool
) -> None:
    """``src_parent/src_name`` (a file or a tree) to ``dst_parent/dst_name``, built under a temporary
    name and swapped in at the end. In a tree, links are copied as links (their text, never what they
    point to) and devices, FIFOs and sockets are left out."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(src_name, flags, dir_fd=src_parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FilesError(f"{shown}: is a symbolic link; it is not followed") from None
        raise _fail(shown, exc) from exc
    temp = _temp_name("copy")
    with _closing(fd):
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise FilesError(f"{shown}: is neither a regular file nor a directory")
        try:
            if stat.S_ISDIR(st.st_mode):
                _copy_tree(fd, st, dst_parent, temp, shown)
            else:
                _copy_file(fd, st, dst_parent, temp)
            _replace(dst_parent, temp, dst_name)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(dst_parent, temp)
            raise


def _copy_file(src: int, st: os.stat_result, dst_parent: int, name: str) -> None:
    os.set_blocking(src, True)
    fd = os.open(name, NEW_FILE, 0o600, dir_fd=dst_parent)
    with _closing(fd):
        _copy_fd(src, fd)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_tree(src: int, st: os.stat_result, dst_parent: int, name: str, shown: str) -> None:
    """Depth first, two descriptors per level; directories stay writable by the user (mode | 0700)."""
    names = sorted(os.listdir(src), reverse=True)  # before the copy exists, in case it is inside
    os.mkdir(name, 0o700, dir_fd=dst_parent)
    top = os.open(name, LIST_FLAGS, dir_fd=dst_parent)
    top_st = os.fstat(top)
    stack: list[tuple[int, int, str, int, list[str]]] = [
        (os.dup(src), top, shown, stat.S_IMODE(st.st_mode), names)
    ]
    try:
        while stack:
            s, d, where, mode, names = stack[-1]
            if not names:
                stack.pop()
                os.fchmod(d, (mode & 0o777) | 0o700)
                os.close(s)
                os.close(d)
                continue
            child = names.pop()
            path = posixpath.join(where, child)
            try:
                cst = os.stat(child, dir_fd=s, follow_symlinks=False)
                if (cst.st_dev, cst.st_ino) == (top_st.st_dev, top_st.st_ino):
                    continue  # the copy being made, inside what is copied
                if stat.S_ISDIR(cst.st_mode):
                    cs = os.open(child, LIST_FLAGS, dir_fd=s)
                    try:
                        os.mkdir(child, 0o700, dir_fd=d)
                        cd = os.open(child, LIST_FLAGS, dir_fd=d)
                    except BaseException:
                        os.close(cs)
                        raise
                    stack.append(
                        (cs, cd, path, stat.S_IMODE(cst.st_mode), sorted(os.listdir(cs), reverse=True))
                    )
                elif stat.S_ISLNK(cst.st_mode):
                    os.symlink(os.readlink(child, dir_fd=s), child, dir_fd=d)
                elif stat.S_ISREG(cst.st_mode):
                    f = os.open(child, READ_FLAGS, dir_fd=s)
                    with _closing(f):
                        fst = os.fstat(f)
                        if stat.S_ISREG(fst.st_mode):
                            _copy_file(f, fst, d, child)
            except FileNotFoundError:
                continue  # gone since it was listed
            except OSError as exc:
                raise _fail(path, exc) from exc
    finally:
        for s, d, *_ in stack:
            os.close(s)
            os.close(d)


def op_collect(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """Regular files matching the globs: path, size and SHA-256, walking the job directory without
    following any link."""
    globs = Globs([str(g) for g in args["globs"]])
    max_files, max_bytes = int(args["max_files"]), args.get("max_bytes")
    found: list[CollectedFile] = []
    total = 0
    with _closing(open_job_dir(args["dir"])) as job:
        top = os.open(".", LIST_FLAGS, dir_fd=job)
        stack: list[tuple[int, str, Any, list[str]]] = [(top, "", globs.start(), [])]
        try:
            stack[0][3].extend(sorted(os.listdir(top), reverse=True))
            while stack:
                fd, prefix, states, names = stack[-1]
                if not names:
                    os.close(stack.pop()[0])
                    continue
                name = names.pop()
                here = globs.step(states, name)
                if not here:
                    continue
                path = f"{prefix}/{name}" if prefix else name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode) and globs.alive(here):
                        sub = os.open(name, LIST_FLAGS, dir_fd=fd)
                        stack.append((sub, path, here, sorted(os.listdir(sub), reverse=True)))
                    elif stat.S_ISREG(st.st_mode) and globs.matched(here):
                        size, digest = _hash(fd, name)
                        if size is None:
                            continue
                        found.append(CollectedFile(path, size, digest))
                        total += size
                        if len(found) > max_files:
                            raise FilesError(f"more than {max_files} files match the outputs")
                        if max_bytes is not None and total > max_bytes:
                            raise FilesError(f"the outputs hold more than the {max_bytes} bytes allowed")
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone, or swapped for something else, since it was listed
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        continue  # replaced by a link since it was listed: skipped like any link
                    raise _fail(quoted(path), exc) from exc
        finally:
            for fd, *_ in stack:
                os.close(fd)
    found.sort(key=lambda f: f.path)
    return [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in found]


def _hash(parent: int, name: str) -> tuple[int | None, str]:
    fd = os.open(name, READ_FLAGS, dir_fd=parent)
    with _closing(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, ""
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, BUFFER):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def op_read(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """A file's bytes from ``offset`` to stdout; with ``follow``, new data too until stdin closes."""
    rel = str(args["path"])
    parts = relative_parts(rel, "file")
    chunk = max(1, int(args.get("chunk", 64 * 1024)))
    with _closing(open_job_dir(args["dir"])) as job:
        try:
            parent = open_relative(job, parts[:-1])
        except FileMissing:
            raise FileMissing(f"{quoted(rel)}: no such file in the job directory") from None
        with _closing(parent):
            try:
                fd = os.open(parts[-1], READ_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                raise FileMissing(f"{quoted(rel)}: no such file in the job directory") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise FilesError(f"{quoted(rel)}: is a symbolic link; it is not followed") from None
                raise _fail(quoted(rel), exc) from exc
    with _closing(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FilesError(f"{quoted(rel)}: is not a regular file")
        os.lseek(fd, max(0, int(args.get("offset", 0))), os.SEEK_SET)
        following = bool(args.get("follow"))
        sink = out.fileno()
        while True:
            data = os.read(fd, chunk)
            if data:
                _write_all(sink, data)
                continue
            if not following:
                break
            ready, _, _ = select.select([stdin.fileno()], [], [], FOLLOW_POLL)
            if ready and not os.read(stdin.fileno(), 4096):
                following = False  # the parent is done following: drain what is there, then end
    return None


def op_remove(args: dict[str, Any], stdin: IO[bytes], out: IO[bytes]) -> Any:
    """The job directory and everything in it, links removed, never followed; missing is fine."""
    path = str(args["dir"]).rstrip("/")
    head, name = posixpath.split(path)
    check_name(name, "job directory")
    try:
        parent = open_absolute(head or "/", trusted=(0,))
    except FileMissing:
        return {}
    with _closing(parent):
        try:
            remove_tree(parent, name)
        except OSError as exc:
            raise _fail(path, exc) from exc
    return {}


OPERATIONS: dict[str, Callable[[dict[str, Any], IO[bytes], IO[bytes]], Any]] = {
    "mkdir": op_mkdir,
    "write": op_write,
    "unpack": op_unpack,
    "copy-in": op_copy_in,
    "copy-out": op_copy_out,
    "collect": op_collect,
    "read": op_read,
    "remove": op_remove,
}


def _refuse(message: str, *, missing: bool = False) -> int:
    sys.stderr.write(json.dumps({"error": message, "missing": missing}) + "\n")
    sys.stderr.flush()
    return REFUSED


def _cancel(signum: int, frame: object) -> None:
    raise Cancelled


def _preload() -> None:
    """Load now what the standard library imports lazily: once the helper is the user, the
    interpreter's own files may be out of reach (a Python installed under a 0700 ``/root``)."""
    import bz2  # noqa: F401  (tarfile's and zipfile's codecs)
    import lzma  # noqa: F401
    import zlib  # noqa: F401

    codecs.lookup("cp437")  # zip entry names without the UTF-8 flag


def main(argv: list[str]) -> int:
    identity, rest = parse_identity(argv)
    _preload()
    if identity is not None and identity[0] != 0:
        become(*identity)
    die_with_parent()  # after become: changing credentials clears the parent-death signal
    if os.getppid() == 1:
        return CANCELLED
    signal.signal(signal.SIGTERM, _cancel)
    if os.geteuid() == 0 or os.getuid() == 0:
        return _refuse("file operations for jobs never run as root")
    if len(rest) != 1 or rest[0] not in OPERATIONS:
        return _refuse(f"unknown operation {' '.join(rest)!r}; known: {', '.join(OPERATIONS)}")
    os.umask(0o022)
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        header = stdin.readline(HEADER_LIMIT)
        args = json.loads(header)
        if not isinstance(args, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return _refuse(f"the helper's arguments are not a JSON object: {exc}")
    try:
        result = OPERATIONS[rest[0]](args, stdin, out)
        if result is not None:
            out.write(json.dumps(result, separators=(",", ":")).encode() + b"\n")
        out.flush()
    except Cancelled:
        return CANCELLED
    except FileMissing as exc:
        return _refuse(str(exc), missing=True)
    except FilesError as exc:
        return _refuse(str(exc))
    except BrokenPipeError:
        return 0  # the parent stopped reading (a stream closed early)
    except OSError as exc:
        return _refuse(f"{rest[0]}: {_why(exc)}" + (f": {exc.filename}" if exc.filename else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
