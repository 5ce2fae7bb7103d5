"""Files of a job's directory, and the user's files on the bridge's host, touched as the job's owner.

The bridge runs as root inside the server. Every file operation here runs in a helper process,
``python -m slurmlink.bridge.asuser`` (:mod:`slurmlink.bridge.asuser`), that takes the owner's uid, gid
and groups before it touches anything, so the kernel judges each access as it would for the user's
own shell: a link to ``/etc/shadow`` planted by a job gives nothing, a file only root may read stays
unread. Inside the job directory nothing is reached through a link at all. Only the two top levels of
the job directories' tree are made by root: ``<root>`` (root's, 0711) and ``<root>/<uid>`` (the
user's, 0700), which users cannot make since only root may write ``<root>``.

Everything is asyncio: the helpers are subprocesses whose pipes the event loop serves, and a parent
side file (an upload the server kept) is read in a thread. A cancelled call stops its helper
(SIGTERM, which removes its temporary files; SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from slurmlink.bridge.owner import Owner
from slurmlink.bridge.paths import (
    REFUSED,
    CollectedFile,
    FileMissing,
    FilesError,
    Globs,
    UnpackLimits,
    check_name,
    relative_parts,
)
from slurmlink.identity import child_argv, child_environment

__all__ = [
    "CollectedFile",
    "FileMissing",
    "FilesError",
    "UnpackLimits",
    "collect",
    "copy_in",
    "copy_out",
    "make_job_dir",
    "read_stream",
    "remove_job_dir",
    "unpack",
    "write_file",
]

HELPER = "slurmlink.bridge.asuser"
#: How long a stopped helper gets between SIGTERM and SIGKILL.
TERM_GRACE = 2.0
#: How often ``read_stream`` asks ``follow()`` whether to keep following.
FOLLOW_POLL = 0.5
#: Bytes per write to a helper's stdin.
FEED_CHUNK = 1 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Source = bytes | AsyncIterator[bytes] | Path


# -- the helper process -------------------------------------------------------------------------


def _helper_argv(owner: Owner, op: str) -> list[str]:
    """The helper's command line: as root, with the owner's ids; otherwise only as ourselves."""
    if owner.uid == 0:
        raise FilesError("jobs never run as root: file operations as uid 0 are refused")
    me = os.geteuid()
    if me != 0 and owner.uid != me:
        raise FilesError(
            f"cannot act as {owner.login} (uid {owner.uid}): this process runs as uid {me} and is not root"
        )
    return [*child_argv(HELPER, owner.uid, owner.gid, owner.groups), op]


async def _start(owner: Owner, op: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_helper_argv(owner, op),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
        env=child_environment(),
    )


async def _stop(proc: asyncio.subprocess.Process, *, grace: float = TERM_GRACE) -> None:
    """SIGTERM (the helper removes its temporary files), SIGKILL if it is still there after ``grace``
    or if this wait is itself cancelled."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


def _outcome(op: str, code: int, stderr: bytes) -> None:
    """Raise what a helper that exited with ``code`` reported (nothing for success)."""
    if code == 0:
        return
    lines = stderr.decode(errors="replace").strip().splitlines()
    if code == REFUSED and lines:
        try:
            record = json.loads(lines[-1])
        except ValueError:
            record = None
        if isinstance(record, dict) and "error" in record:
            raise (FileMissing if record.get("missing") else FilesError)(str(record["error"]))
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else "died"
    else:
        how = f"exited with status {code}"
    detail = f": {lines[-1]}" if lines else ""
    raise FilesError(f"the file helper ({op}) {how}{detail}")


async def _feed(stdin: asyncio.StreamWriter, header: dict[str, Any], data: Source | None) -> None:
    """The arguments line, then the data. The caller closes stdin only after a complete feed: a
    helper that saw its stdin end early would take a truncated upload for a whole one."""
    try:
        stdin.write(json.dumps(header).encode() + b"\n")
        await stdin.drain()
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data)
            for start in range(0, len(view), FEED_CHUNK):
                stdin.write(view[start : start + FEED_CHUNK])
                await stdin.drain()
        elif isinstance(data, Path):
            await _feed_file(stdin, data)
        elif data is not None:
            async for chunk in data:
                if chunk:
                    stdin.write(chunk)
                    await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the helper stopped reading: it refused, and says why on stderr


async def _feed_file(stdin: asyncio.StreamWriter, path: Path) -> None:
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise FilesError(f"{path}: {exc.strerror or exc}") from exc
    try:
        while chunk := await asyncio.to_thread(f.read, FEED_CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    finally:
        await asyncio.to_thread(f.close)


async def _close(stdin: asyncio.StreamWriter) -> None:
    stdin.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stdin.wait_closed()


async def _run(owner: Owner, op: str, header: dict[str, Any], data: Source | None = None) -> Any:
    """One helper run: arguments and data in, its JSON result out, its refusal raised."""
    proc = await _start(owner, op)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = asyncio.ensure_future(proc.stdout.read())
    err = asyncio.ensure_future(proc.stderr.read())
    try:
        await _feed(proc.stdin, header, data)
        await _close(proc.stdin)
        stdout, stderr = await out, await err
        code = await proc.wait()
    except BaseException:
        await _stop(proc)
        out.cancel()
        err.cancel()
        raise
    _outcome(op, code, stderr)
    return json.loads(stdout) if stdout.strip() else None


# -- the job directory --------------------------------------------------------------------------


async def make_job_dir(owner: Owner, root: Path, name: str) -> Path:
    """``root/<uid>/<name>``, made for ``owner`` (idempotent); its path.

    ``root`` (root's, 0711 when made here) and ``root/<uid>`` (the owner's, 0700) are made by this
    process, the job directory itself (0700) by the owner. An existing one is fine if it is a real
    directory of the owner's; a link or anything else in its place is refused.
    """
    check_name(name, "job directory name")
    _helper_argv(owner, "mkdir")  # refuse early, before anything is made
    root = Path(root)
    if not root.is_absolute():
        raise FilesError(f"the job directories' root {root}: must be an absolute path")
    user_dir = await asyncio.to_thread(_user_dir, owner, root)
    await _run(owner, "mkdir", {"parent": str(user_dir), "name": name})
    return user_dir / name


async def ensure_user_dir(owner: Owner, root: Path) -> Path:
    """``root`` and ``root/<uid>`` made or checked (the owner's, 0700), without starting a helper:
    for callers that make the job directory themselves, as the owner."""
    if not Path(root).is_absolute():
        raise FilesError(f"the job directories' root {root}: must be an absolute path")
    return await asyncio.to_thread(_user_dir, owner, Path(root))


def _user_dir(owner: Owner, root: Path) -> Path:
    """``root`` and ``root/<uid>``, made or checked in this process (a thread: file-system calls)."""
    as_root = os.geteuid() == 0
    existed = root.exists()
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
        st = os.stat(root)
    except OSError as exc:
        raise FilesError(f"the job directories' root {root}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise FilesError(f"the job directories' root {root}: is not a directory")
    if as_root:
        if st.st_uid != 0:
            raise FilesError(
                f"the job directories' root {root}: must be owned by root, not uid {st.st_uid}"
                " (whoever owns it could replace any user's job directories)"
            )
        if not existed:
            os.chmod(root, 0o711)  # makedirs' mode is less the umask
            st = os.stat(root)
        if st.st_mode & 0o022:
            raise FilesError(f"the job directories' root {root}: must not be writable by group or others")
        if not st.st_mode & 0o001:
            raise FilesError(
                f"the job directories' root {root}: must be searchable by others (0711), or users"
                " cannot reach their own job directories"
            )
    user = str(owner.uid)
    shown = root / user
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(user, 0o700, dir_fd=fd)
        try:
            ufd = os.open(user, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                lst = os.stat(user, dir_fd=fd, follow_symlinks=False)
                what = "a symbolic link" if stat.S_ISLNK(lst.st_mode) else "not a directory"
                raise FilesError(
                    f"{shown}: is {what}; refused (it must be the user's own directory)"
                ) from None
            raise FilesError(f"{shown}: {exc.strerror or exc}") from exc
        try:
            ust = os.fstat(ufd)
            if ust.st_uid != owner.uid:
                if not (as_root and ust.st_uid == 0):  # root's: made here, not yet handed over
                    raise FilesError(
                        f"{shown}: belongs to uid {ust.st_uid}, not to {owner.login} ({owner.uid})"
                    )
                os.fchown(ufd, owner.uid, owner.gid)
            if stat.S_IMODE(ust.st_mode) != 0o700:
                os.fchmod(ufd, 0o700)
        finally:
            os.close(ufd)
    except OSError as exc:
        raise FilesError(f"{shown}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return shown


async def remove_job_dir(owner: Owner, job_dir: Path | str) -> None:
    """``rm -rf job_dir`` as the owner, no link followed; a missing directory is fine."""
    await _run(owner, "remove", {"dir": str(job_dir)})


# -- into the job directory ---------------------------------------------------------------------


async def write_file(
    owner: Owner,
    job_dir: Path | str,
    rel_path: str,
    data: Source,
    *,
    mode: int = 0o600,
    max_bytes: int | None = None,
    sha256: str | None = None,
) -> tuple[int, str]:
    """``data`` into ``job_dir/rel_path`` as the owner; its size and hex SHA-256.

    Missing directories are made (0700); the file appears whole or not at all (a temporary file,
    fsync, rename), replacing a file there. More than ``max_bytes`` or a digest other than ``sha256``
    leaves nothing. A ``Path`` is a file this process reads (an upload it kept) and streams over.
    """
    relative_parts(rel_path, "file")
    if mode & ~0o777:
        raise FilesError(f"file mode {mode:o}: only permission bits (0777) may be set")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise FilesError(f"SHA-256 {sha256!r}: must be 64 lowercase hexadecimal digits")
    header = {"dir": str(job_dir), "path": rel_path, "mode": mode, "max_bytes": max_bytes, "sha256": sha256}
    result = await _run(owner, "write", header, data)
    return int(result["size"]), str(result["sha256"])


async def unpack(
    owner: Owner,
    job_dir: Path | str,
    rel_to: str,
    fmt: Literal["tar", "zip"],
    data: Path | bytes,
    *,
    limits: UnpackLimits = UnpackLimits(),  # noqa: B008  (frozen, so one shared default is safe)
) -> int:
    """Unpack a tar (plain, gzip, bzip2 or xz) or zip archive into ``job_dir/rel_to`` as the owner;
    the number of entries written.

    Only files and directories: an absolute name, a ``..`` component, any link, a device or FIFO is
    refused naming the entry, as are more than ``limits.max_entries`` entries, more than
    ``limits.max_bytes`` unpacked, and zip entries inflating beyond ``limits.max_ratio``. The archive
    is unpacked into a private directory first and merged into place only when all of it was fine
    (a file there is replaced, directories are merged), so a refusal leaves nothing behind.
    """
    if fmt not in ("tar", "zip"):
        raise FilesError(f"archive format {fmt!r}: only tar and zip are supported")
    relative_parts(rel_to, "unpack destination", allow_empty=True)
    header = {"dir": str(job_dir), "to": rel_to, "format": fmt, "limits": limits.to_json()}
    result = await _run(owner, "unpack", header, data)
    return int(result["entries"])


async def copy_in(
    owner: Owner, source: str, job_dir: Path | str, rel_to: str, name: str | None = None
) -> None:
    """Copy the host file or tree ``source`` (absolute; read as the owner) to
    ``job_dir/rel_to/name`` (``name`` defaults to the source's base name), replacing what is there.

    In a tree, links are copied as links (never followed: their text is all that is copied) and
    devices, FIFOs and sockets are left out. ``source`` itself may be a link only if root or the
    owner owns it, as the kernel's ``protected_symlinks`` rule has it.
    """
    if not source.startswith("/"):
        raise FilesError(f"input {source!r}: must be an absolute path")
    if name is not None:
        check_name(name, "input name")
    relative_parts(rel_to, "input destination", allow_empty=True)
    await _run(owner, "copy-in", {"source": source, "dir": str(job_dir), "to": rel_to, "name": name})


# -- out of the job directory -------------------------------------------------------------------


async def copy_out(owner: Owner, job_dir: Path | str, rel_from: str, dest: str, *, create: bool) -> None:
    """Copy ``job_dir/rel_from`` (a file or a tree) to the host path ``dest`` as the owner,
    replacing what is there; with ``create``, ``dest``'s directory is made if missing (the WLM
    operator's ``DirectoryOrCreate``).

    ``rel_from`` itself must not be a link; links inside a tree are copied as links (their text,
    never what they point to), devices, FIFOs and sockets are left out.
    """
    relative_parts(rel_from, "results path", allow_empty=True)
    if not dest.startswith("/"):
        raise FilesError(f"results destination {dest!r}: must be an absolute path")
    header = {"dir": str(job_dir), "from": rel_from, "dest": dest, "create": create}
    await _run(owner, "copy-out", header)


async def collect(
    owner: Owner,
    job_dir: Path | str,
    globs: list[str],
    *,
    max_files: int = 10_000,
    max_bytes: int | None = None,
) -> list[CollectedFile]:
    """The regular files of ``job_dir`` matching ``globs``, with size and SHA-256, sorted by path.

    :func:`glob.glob` semantics (``recursive=True``: ``**`` spans directories, wildcards skip names
    starting with ``.`` unless the pattern's does too); directories contribute nothing themselves;
    links are neither followed nor collected. More than ``max_files`` files or ``max_bytes`` bytes
    is an error.
    """
    if not globs:
        return []
    Globs(list(globs))  # refuse a glob leaving the job directory before any process starts
    header = {"dir": str(job_dir), "globs": list(globs), "max_files": max_files, "max_bytes": max_bytes}
    records = await _run(owner, "collect", header)
    return [CollectedFile(str(r["path"]), int(r["size"]), str(r["sha256"])) for r in records]


async def read_stream(
    owner: Owner,
    job_dir: Path | str,
    rel_path: str,
    *,
    offset: int = 0,
    follow: Callable[[], bool] | None = None,
    chunk: int = 64 * 1024,
) -> AsyncIterator[bytes]:
    """The bytes of ``job_dir/rel_path`` from ``offset``, read as the owner (a link is refused).

    With ``follow``, new data keeps coming (looked for every half second) while ``follow()`` is
    true; then what is there is read and the stream ends. A missing file raises :class:`FileMissing`
    on the first iteration. Closing the iterator early stops the helper.
    """
    relative_parts(rel_path, "file")
    if offset < 0:
        raise FilesError(f"offset {offset}: must not be negative")
    proc = await _start(owner, "read")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout = proc.stdin, proc.stdout
    err = asyncio.ensure_future(proc.stderr.read())
    watcher: asyncio.Future[None] | None = None
    try:
        header = {"dir": str(job_dir), "path": rel_path, "offset": offset, "follow": follow is not None}
        await _feed(stdin, header, None)
        if follow is None:
            await _close(stdin)
        else:
            watcher = asyncio.ensure_future(_watch(follow, stdin))
        while data := await stdout.read(chunk):
            yield data
        code = await proc.wait()
        stderr = await err
        _outcome("read", code, stderr)
    finally:
        if watcher is not None:
            watcher.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        err.cancel()


async def _watch(follow: Callable[[], bool], stdin: asyncio.StreamWriter) -> None:
    """Close the helper's stdin once ``follow()`` turns false (or fails): it then drains the file
    and ends."""
    try:
        while follow():
            await asyncio.sleep(FOLLOW_POLL)
    finally:
        stdin.close()
