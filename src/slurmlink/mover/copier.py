"""The copy itself: directories, links, and files on parallel threads, hashed and verified.

Each file is read into a reused buffer, hashed with xxh3-128 as it is read, written under a temporary
name next to its final one, read back and hashed again (``verify``), given its mode and times, and
renamed into place: a file under its final name is always complete and verified. (A copy ``in_place``
writes small files under their final names.) A small file is created with its mode when neither the
umask nor a default ACL can take bits from it, saving a chmod. Files of ``SPLIT_AT`` bytes or more are
copied in ``RANGE``-sized pieces by several threads at once.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread  # imported now: after the worker drops root it may not read the stdlib
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from slurmlink.mover.paths import deepest_existing, error, open_path
from slurmlink.mover.plan import FileItem, Plan, open_rel
from slurmlink.mover.spec import MoveError

BUFFER = 8 << 20
RANGE = 32 << 20
SPLIT_AT = 64 << 20
#: Small files go to the threads this many at a time (with one open of their directories).
BATCH = 32
PART = ".slurmlink-part"
#: Every mode bit: a file created with a mode that loses any of these is given its mode afterwards.
ALL_BITS = 0o7777

Emit = Callable[[dict[str, Any]], None]


class Stopped(Exception):
    """The copy is being stopped (cancelled, or another thread failed)."""


def dest_digest(digest: bytes) -> bytes:
    """The digest of what was read back from the destination (a seam for fault-injection tests)."""
    return digest


def temp_name(name: str) -> str:
    part = f".{name}{PART}"
    return part if len(part.encode()) <= 255 else f".{xxhash.xxh3_64_hexdigest(name)}{PART}"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def check_space(plan: Plan, uid: int) -> None:
    """Fail before writing anything if a destination's file system cannot hold the copy."""
    device_of_root: dict[int, int] = {}
    free: dict[int, tuple[str, int]] = {}  # device -> (a destination on it, bytes free)
    needed: dict[int, int] = {}
    for item in plan.files:
        if item.root not in device_of_root:
            destination = plan.roots[item.root].destination
            fd = deepest_existing(destination, uid)
            try:
                device = os.fstat(fd).st_dev
                vfs = os.fstatvfs(fd)
            finally:
                os.close(fd)
            device_of_root[item.root] = device
            free.setdefault(device, (destination, vfs.f_bavail * vfs.f_frsize))
        device = device_of_root[item.root]
        needed[device] = needed.get(device, 0) + item.size
    for device, total in needed.items():
        destination, available = free[device]
        if total > available:
            raise MoveError(
                f"not enough space: the copy needs {human(total)} and the file system of "
                f"{destination} has {human(available)} free"
            )


@dataclass
class _Large:
    """A file copied range by range; the last range to finish renames it into place."""

    item: FileItem
    ranges: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    opened: bool = False
    src_dir: int = -1
    dst_dir: int = -1
    src: int = -1
    dst: int = -1
    digests: dict[int, bytes] = field(default_factory=dict)
    left: int = 0
    failed: bool = False


def batches(files: list[FileItem]) -> tuple[list[FileItem], list[list[FileItem]]]:
    """The large files (copied range by range), and the small ones in batches of up to BATCH files of
    one directory (copied with one opening of it)."""
    large: list[FileItem] = []
    by_directory: dict[tuple[int, str], list[FileItem]] = {}
    for item in files:
        if item.size >= SPLIT_AT:
            large.append(item)
        else:
            by_directory.setdefault((item.root, item.rel_dir), []).append(item)
    small = [
        items[start : start + BATCH]
        for items in by_directory.values()
        for start in range(0, len(items), BATCH)
    ]
    return large, small


class Copier:
    """Runs one plan: call :meth:`prepare`, :meth:`run`, :meth:`finish` in that order."""

    def __init__(
        self,
        plan: Plan,
        uid: int,
        workers: int,
        verify: bool,
        emit: Emit,
        stop: threading.Event,
        *,
        in_place: bool = False,
    ):
        self.plan = plan
        #: Small files written under their own names (see ``CopySpec.in_place``).
        self.in_place = in_place
        #: Which process of a copy split across several this is (its progress records say so).
        self.share = 0
        self.uid = uid
        self.workers = max(1, workers)
        self.verify = verify
        self.emit = emit
        self.stop = stop
        self.bytes_done = 0
        self.error: MoveError | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self.src_roots: list[int] = []
        self.dst_roots: list[int] = []
        #: Mode bits a new file might not get: the umask's, and the special ones (a write clears
        #: set-user-ID and set-group-ID, so those are set after the data).
        umask = os.umask(0o077)
        os.umask(umask)
        self._masked = umask | 0o7000

    # -- directories and links ------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the roots, make the destination's directories (writable for now) and its links."""
        for root in self.plan.roots:
            self.src_roots.append(open_path(root.source, self.uid))
            self.dst_roots.append(open_path(root.destination, self.uid, create=True))
        for fd in self.dst_roots:
            _writable(fd)
        for d in self.plan.directories:
            base = self.plan.roots[d.root].destination
            fd = open_rel(self.dst_roots[d.root], d.rel, base, create=True)
            try:
                _writable(fd)
            finally:
                os.close(fd)
        for link in self.plan.links:
            path = self.plan.destination_path(link.root, link.rel_dir, link.dst_name)
            fd = open_rel(self.dst_roots[link.root], link.rel_dir, self.plan.roots[link.root].destination)
            tmp = temp_name(link.dst_name)
            try:
                _unlink(fd, tmp)
                os.symlink(link.target, tmp, dir_fd=fd)
                os.utime(tmp, ns=(link.atime_ns, link.mtime_ns), dir_fd=fd, follow_symlinks=False)
                os.rename(tmp, link.dst_name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as exc:
                raise error(path, exc) from exc
            finally:
                os.close(fd)

    def finish(self) -> None:
        """Give directories their modes and times, deepest first (writing into one changes its mtime)."""
        for d in reversed(self.plan.directories):
            fd = open_rel(self.dst_roots[d.root], d.rel, self.plan.roots[d.root].destination)
            try:
                os.fchmod(fd, d.mode)
                os.utime(fd, ns=(d.atime_ns, d.mtime_ns))
            finally:
                os.close(fd)
        for index, root in enumerate(self.plan.roots):
            if root.tree and root.top is not None:
                try:
                    os.fchmod(self.dst_roots[index], root.top.mode)
                    os.utime(self.dst_roots[index], ns=(root.top.atime_ns, root.top.mtime_ns))
                except PermissionError:
                    pass  # an existing directory of someone else's (a buffer's root) keeps its own

    def close(self) -> None:
        for fd in self.src_roots + self.dst_roots:
            os.close(fd)
        self.src_roots, self.dst_roots = [], []

    # -- files ----------------------------------------------------------------------------------

    def run(self, interval: float, files: list[FileItem] | None = None) -> None:
        """Copy ``files`` (default: every file of the plan); progress every ``interval`` seconds;
        raises the first error."""
        jobs: list[Callable[[], None]] = []
        large_files, small_batches = batches(self.plan.files if files is None else files)
        for item in large_files:
            large = _Large(item, ranges=(item.size + RANGE - 1) // RANGE)
            large.left = large.ranges
            jobs.extend(self._range_job(large, i) for i in range(large.ranges))
        for batch in small_batches:
            jobs.append(self._batch_job(batch[0].root, batch[0].rel_dir, batch))
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="mover") as pool:
            pending = {pool.submit(self._guarded, job) for job in jobs}
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=interval)
                self.emit({"t": "p", "bytes": self.bytes_done, "share": self.share})
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise Stopped

    def _guarded(self, job: Callable[[], None]) -> None:
        """Run a job; each checks ``stop`` itself (a large file's last range must still clean up)."""
        try:
            job()
        except Stopped:
            pass
        except MoveError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(MoveError(str(exc)))

    def _fail(self, exc: MoveError) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def _buffer(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(BUFFER))
        return buf

    def _batch_job(self, root: int, rel_dir: str, items: list[FileItem]) -> Callable[[], None]:
        def job() -> None:
            if self.stop.is_set():
                raise Stopped
            src_dir = open_rel(self.src_roots[root], rel_dir, self.plan.roots[root].source)
            opened: list[int] = []
            try:
                # Open the batch's sources first and ask the kernel to read them all ahead: a cold
                # source is read many files at a time, not one after the other.
                for item in items:
                    path = self.plan.source_path(root, rel_dir, item.src_name)
                    fd = _open_source(src_dir, item, path, os.POSIX_FADV_WILLNEED)
                    opened.append(fd)
                dst_dir = open_rel(self.dst_roots[root], rel_dir, self.plan.roots[root].destination)
                verified: list[dict[str, Any]] = []
                try:
                    # New files' modes come from the umask, or from a default ACL instead.
                    masked = self._masked if not _default_acl(dst_dir) else ALL_BITS
                    for item, fd in zip(items, opened, strict=True):
                        verified.append(self._copy_file(fd, dst_dir, item, masked))
                finally:
                    os.close(dst_dir)
                    if verified:  # one report for the batch: one write, one lock, one line to parse
                        self.emit({"t": "vs", "files": verified})
            finally:
                for fd in opened:
                    os.close(fd)
                os.close(src_dir)

        return job

    def _copy_file(self, src: int, dst_dir: int, item: FileItem, masked: int) -> dict[str, Any]:
        """Copy one small file; its verified record. ``masked``: the mode bits a new file in
        ``dst_dir`` might not get."""
        src_path = self.plan.source_path(item.root, item.rel_dir, item.src_name)
        dst_path = self.plan.destination_path(item.root, item.rel_dir, item.dst_name)
        name = item.dst_name if self.in_place else temp_name(item.dst_name)
        # Created with its final mode when nothing can take bits from it: one chmod less per file.
        final = not item.mode & masked
        dst = _create(dst_dir, name, dst_path, item.mode if final else 0o600)
        try:
            if item.size <= BUFFER:
                digest = self._copy_whole(src, dst, item.size, src_path, dst_path)
            else:
                digest = self._copy_range(src, dst, 0, item.size, src_path, dst_path)
            _set_attributes(dst, item, dst_path, chmod=not final)
        except BaseException:
            os.close(dst)
            _unlink(dst_dir, name)
            raise
        os.close(dst)
        if not self.in_place:
            _rename(dst_dir, name, item.dst_name, dst_path)
        return self._verified(item, src_path, dst_path, digest)

    def _range_job(self, large: _Large, index: int) -> Callable[[], None]:
        def job() -> None:
            item = large.item
            src_path = self.plan.source_path(item.root, item.rel_dir, item.src_name)
            dst_path = self.plan.destination_path(item.root, item.rel_dir, item.dst_name)
            try:
                with large.lock:
                    if large.failed or self.stop.is_set():
                        raise Stopped
                    if not large.opened:
                        self._open_large(large, src_path, dst_path)
                offset = index * RANGE
                length = min(RANGE, item.size - offset)
                # A descriptor of its own: read-ahead state is per open file, and ranges read in
                # parallel through one would look like random reads and get none.
                src = _open_source(large.src_dir, item, src_path)
                try:
                    if os.fstat(src).st_ino != os.fstat(large.src).st_ino:
                        raise MoveError(f"{src_path}: replaced while it was being copied")
                    os.posix_fadvise(src, offset, length, os.POSIX_FADV_SEQUENTIAL)
                    digest = self._copy_range(src, large.dst, offset, length, src_path, dst_path)
                finally:
                    os.close(src)
                with large.lock:
                    large.digests[index] = digest
            except BaseException:
                with large.lock:
                    large.failed = True
                raise
            finally:
                with large.lock:
                    large.left -= 1
                    last = large.left == 0
                if last:
                    self._close_large(large, src_path, dst_path)

        return job

    def _open_large(self, large: _Large, src_path: str, dst_path: str) -> None:
        item = large.item
        large.src_dir = open_rel(self.src_roots[item.root], item.rel_dir, self.plan.roots[item.root].source)
        large.dst_dir = open_rel(
            self.dst_roots[item.root], item.rel_dir, self.plan.roots[item.root].destination
        )
        large.src = _open_source(large.src_dir, item, src_path)
        large.dst = _create(large.dst_dir, temp_name(item.dst_name), dst_path)
        large.opened = True

    def _close_large(self, large: _Large, src_path: str, dst_path: str) -> None:
        item = large.item
        tmp = temp_name(item.dst_name)
        try:
            if large.opened and not large.failed:
                _set_attributes(large.dst, item, dst_path)
                os.close(large.dst)
                large.dst = -1
                _rename(large.dst_dir, tmp, item.dst_name, dst_path)
                whole = xxhash.xxh3_128(b"".join(large.digests[i] for i in range(large.ranges))).digest()
                self.emit(self._verified(item, src_path, dst_path, whole))
        finally:
            for fd in (large.src, large.dst):
                if fd >= 0:
                    os.close(fd)
            if large.failed and large.dst_dir >= 0:
                _unlink(large.dst_dir, tmp)
            for fd in (large.src_dir, large.dst_dir):
                if fd >= 0:
                    os.close(fd)

    def _copy_whole(self, src: int, dst: int, size: int, src_path: str, dst_path: str) -> bytes:
        """Copy a file that fits the buffer: one read, one hash, one write (and one read back and
        hash); most files of a tree are small, and each call less is felt ten thousand times."""
        if self.stop.is_set():
            raise Stopped
        data = self._buffer()[:size]
        if _read_into(src, data, src_path) != size:
            raise MoveError(f"{src_path}: the file shrank while it was being copied")
        digest = xxhash.xxh3_128_digest(data)
        _write_all(dst, data, 0, dst_path)
        with self._lock:
            self.bytes_done += size
        if self.verify:
            got = _read_into(dst, data, dst_path)
            _check(xxhash.xxh3_128_digest(data[:got]), digest, dst_path)
        return digest

    def _copy_range(
        self, src: int, dst: int, offset: int, length: int, src_path: str, dst_path: str
    ) -> bytes:
        """Copy ``length`` bytes at ``offset``; the xxh3-128 digest of what was read."""
        buf = self._buffer()
        hasher = xxhash.xxh3_128()
        pos, end = offset, offset + length
        while pos < end:
            if self.stop.is_set():
                raise Stopped
            want = min(BUFFER, end - pos)
            try:
                n = os.preadv(src, [buf[:want]], pos)
            except OSError as exc:
                raise error(src_path, exc) from exc
            if n == 0:
                raise MoveError(f"{src_path}: the file shrank while it was being copied")
            chunk = buf[:n]
            hasher.update(chunk)
            _write_all(dst, chunk, pos, dst_path)
            pos += n
            with self._lock:
                self.bytes_done += n
        digest = bytes(hasher.digest())
        if self.verify:
            _check(self._read_back(dst, offset, end, dst_path).digest(), digest, dst_path)
        return digest

    def _read_back(self, dst: int, offset: int, end: int, dst_path: str) -> Any:
        buf = self._buffer()
        hasher = xxhash.xxh3_128()
        pos = offset
        while pos < end:
            if self.stop.is_set():
                raise Stopped
            try:
                n = os.preadv(dst, [buf[: min(BUFFER, end - pos)]], pos)
            except OSError as exc:
                raise error(dst_path, exc) from exc
            if n == 0:
                break
            hasher.update(buf[:n])
            pos += n
        return hasher

    def _verified(self, item: FileItem, src_path: str, dst_path: str, digest: bytes) -> dict[str, Any]:
        """The report of a file copied and verified (the parent's journal records it)."""
        return {
            "t": "v",
            "src": src_path,
            "dst": dst_path,
            "size": item.size,
            "smt": item.mtime_ns,
            "dmt": item.mtime_ns,
            "digest": digest.hex(),
            "checked": self.verify,
        }


def _open_source(src_dir: int, item: FileItem, path: str, advice: int = os.POSIX_FADV_SEQUENTIAL) -> int:
    """The source file, checked to be the regular file of the plan; ``advice`` for its read-ahead (a
    larger window for a stream, or the whole of a small file at once)."""
    try:
        fd = os.open(item.src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    except OSError as exc:
        raise error(path, exc) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != item.size:
        os.close(fd)
        raise MoveError(f"{path}: changed while it was being copied")
    os.posix_fadvise(fd, 0, 0, advice)
    return fd


def _check(read_back: bytes, digest: bytes, path: str) -> None:
    """Fail unless what was read back from the destination hashes as the source did."""
    if dest_digest(read_back) != digest:
        raise MoveError(f"{path}: checksum mismatch after copying (the data written differs from the source)")


def _default_acl(dir_fd: int) -> bool:
    """Whether a directory has a default ACL (its new files' modes then follow the ACL, not the
    umask); an error other than "none" or "not supported" counts as yes."""
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP)
    return True


def _read_into(fd: int, data: memoryview, path: str) -> int:
    """Read from offset 0 until ``data`` is full or the file ends; the bytes read."""
    done = 0
    while done < len(data):
        try:
            n = os.preadv(fd, [data[done:]], done)
        except OSError as exc:
            raise error(path, exc) from exc
        if n == 0:
            break
        done += n
    return done


def _write_all(fd: int, data: memoryview, offset: int, path: str) -> None:
    written = 0
    try:
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
    except OSError as exc:
        raise error(path, exc) from exc


def _create(dst_dir: int, tmp: str, path: str, mode: int = 0o600) -> int:
    """The file ``tmp`` (a temporary name, or the final one when written in place), new, open for
    reading and writing whatever ``mode`` says; one left by a killed run (or an older copy in place)
    is removed first (one system call when none is)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(tmp, flags, mode, dir_fd=dst_dir)
        except FileExistsError:
            _unlink(dst_dir, tmp)
            return os.open(tmp, flags, mode, dir_fd=dst_dir)
    except OSError as exc:
        raise error(path, exc) from exc


def _set_attributes(fd: int, item: FileItem, path: str, *, chmod: bool = True) -> None:
    try:
        if chmod:
            os.fchmod(fd, item.mode)
        os.utime(fd, ns=(item.atime_ns, item.mtime_ns))
    except OSError as exc:
        raise error(path, exc) from exc


def _rename(dst_dir: int, tmp: str, name: str, path: str) -> None:
    try:
        os.rename(tmp, name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
    except OSError as exc:
        _unlink(dst_dir, tmp)
        raise error(path, exc) from exc


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _writable(fd: int) -> None:
    """Let the user write into a directory a previous run already gave a read-only mode."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o700 != 0o700:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, mode | 0o700)


__all__ = ["Copier", "Stopped", "check_space", "dest_digest"]
