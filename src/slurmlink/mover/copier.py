"""Carrying out a plan: directories, then links and files on parallel threads, then directory modes and times.

Each file is read once, hashed (xxh3-128) while it is copied, written under a temporary name beside
its final one (``.<name>.slurmlink-part``) and renamed into place with its mode and times, so a file
under its final name is always whole. With ``verify`` the written file is then read back and hashed
again; a mismatch fails the copy. Large files are split into ranges copied by several threads at once,
each range hashed on its own (the file's digest is the hash of the range digests).

Final components are opened with ``O_NOFOLLOW``: a symbolic link where a file or directory is to be
written is an error, never followed. ``skip`` (from a resumed copy's journal) names destination files
already verified: one whose destination and source still have the recorded size and mtime is not
copied again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from slurmlink.mover.plan import DirItem, FileItem, Plan, os_error
from slurmlink.mover.spec import MoveCancelled, MoveError, MoveProgress

try:
    import xxhash

    def new_hash() -> Any:
        return xxhash.xxh3_128()

    HASH_NAME = "xxh3_128"
except ImportError:  # pragma: no cover - xxhash is a declared dependency
    import hashlib

    def new_hash() -> Any:
        return hashlib.blake2b(digest_size=16)

    HASH_NAME = "blake2b-128"

CHUNK = 4 << 20
#: Files larger than this are copied in ranges of RANGE bytes by several threads.
SPLIT = 256 << 20
RANGE = 64 << 20
PART_SUFFIX = ".slurmlink-part"

#: (destination size, destination mtime_ns, source size, source mtime_ns, digest) of a verified file.
Verified = tuple[int, int, int, int, str]


class Copier:
    def __init__(
        self,
        plan: Plan,
        *,
        workers: int,
        verify: bool,
        skip: Mapping[str, Verified],
        on_verified: Callable[[str, Verified], None],
        stop: threading.Event,
    ) -> None:
        self.plan = plan
        self.workers = max(1, workers)
        self.verify = verify
        self.skip = skip
        self.on_verified = on_verified
        self.stop = stop
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.progress = MoveProgress(
            files_total=len(plan.files),
            bytes_total=plan.bytes_total,
            specials_skipped=plan.specials,
        )
        self._local = threading.local()

    # ---- progress ----------------------------------------------------------------------------------

    def snapshot(self) -> MoveProgress:
        with self._lock:
            seconds = time.monotonic() - self.started
            p = MoveProgress(**self.progress.to_json())
        p.seconds = seconds
        p.rate = p.bytes_done / seconds if seconds > 0 else 0.0
        return p

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self.progress, name, getattr(self.progress, name) + value)

    def _check(self) -> None:
        if self.stop.is_set():
            raise MoveCancelled("cancelled")

    # ---- the copy ----------------------------------------------------------------------------------

    def run(self) -> MoveProgress:
        self._check_space()
        for item in self.plan.dirs:
            self._make_dir(item)
        self._add(directories=sum(1 for d in self.plan.dirs if d.mode is not None))
        for link in self.plan.links:
            self._check()
            self._make_link(link.dst, link.target, link.atime_ns, link.mtime_ns)
        self._add(links=len(self.plan.links))
        self._copy_files()
        for item in reversed(self.plan.dirs):  # children before parents: their times stay
            if item.mode is not None:
                self._finish_dir(item)
        return self.snapshot()

    def _check_space(self) -> None:
        needed = self.plan.bytes_total
        if not needed or not self.plan.files:
            return
        directory = posixpath.dirname(self.plan.files[0].dst)
        while directory not in ("", "/") and not os.path.isdir(directory):
            directory = posixpath.dirname(directory)
        try:
            fs = os.statvfs(directory or "/")
        except OSError:
            return
        free = fs.f_bavail * fs.f_frsize
        if free < needed:
            raise MoveError(
                f"not enough space: the copy needs {needed} bytes and {directory} has {free} bytes free"
            )

    def _make_dir(self, item: DirItem) -> None:
        try:
            os.mkdir(item.dst, 0o700)
        except FileExistsError:
            st = os.lstat(item.dst)
            if stat.S_ISLNK(st.st_mode) and item.link_ok and os.path.isdir(item.dst):
                return  # a parent outside the buffers that is a link to a directory: as cp does
            if not stat.S_ISDIR(st.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise MoveError(f"{item.dst} exists and is {what}; it is not followed or replaced") from None
        except OSError as exc:
            raise os_error(item.dst, exc) from None
        else:
            if item.mode is None:  # as mkdir -p would: the user's usual mode
                umask = os.umask(0)
                os.umask(umask)
                with contextlib.suppress(OSError):
                    os.chmod(item.dst, 0o777 & ~umask)

    def _finish_dir(self, item: DirItem) -> None:
        try:
            assert item.mode is not None
            os.chmod(item.dst, item.mode, follow_symlinks=False)
            os.utime(item.dst, ns=(item.atime_ns, item.mtime_ns), follow_symlinks=False)
        except OSError as exc:
            raise os_error(item.dst, exc) from None

    def _make_link(self, dst: str, target: str, atime_ns: int, mtime_ns: int) -> None:
        part = _part_name(dst)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            os.symlink(target, part)
            with contextlib.suppress(OSError):  # not every file system keeps a link's times
                os.utime(part, ns=(atime_ns, mtime_ns), follow_symlinks=False)
            _replace(part, dst)
        except OSError as exc:
            raise os_error(dst, exc) from None

    # ---- files ---------------------------------------------------------------------------------------

    def _copy_files(self) -> None:
        if not self.plan.files:
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="mover") as pool:
            futures: list[Future[None]] = []
            for item in self.plan.files:
                if self._skipped(item):
                    continue
                if item.size > SPLIT:
                    futures.extend(self._submit_ranges(pool, item))
                else:
                    futures.append(pool.submit(self._copy_small, item))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self.stop.set()  # the others stop at their next chunk
                for future in futures:
                    future.cancel()
                errors = [f.exception() for f in failed]
                real = [e for e in errors if not isinstance(e, MoveCancelled)]
                raise (real or errors)[0]  # type: ignore[misc]

    def _skipped(self, item: FileItem) -> bool:
        record = self.skip.get(item.dst)
        if record is None:
            return False
        size, mtime, src_size, src_mtime, _digest = record
        try:
            dst_st = os.lstat(item.dst)
        except OSError:
            return False
        if (dst_st.st_size, dst_st.st_mtime_ns, item.size, item.mtime_ns) != (
            size,
            mtime,
            src_size,
            src_mtime,
        ):
            return False
        self._add(files_skipped=1, bytes_done=item.size)
        return True

    def _buffer(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = memoryview(bytearray(CHUNK))
            self._local.buf = buf
        return buf

    def _copy_small(self, item: FileItem) -> None:
        self._check()
        part = _part_name(item.dst)
        buf = self._buffer()
        digest = new_hash()
        with (
            _open(item.src, os.O_RDONLY) as src,
            _open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) as dst,
        ):
            while True:
                try:
                    n = os.readv(src, [buf])
                except OSError as exc:
                    raise os_error(item.src, exc) from None
                if n == 0:
                    break
                chunk = buf[:n]
                digest.update(chunk)
                _write_all(dst, chunk, part)
                self._add(bytes_done=n)
                self._check()
            self._set_attributes(dst, item, part)
        self._finish_file(item, part, digest.hexdigest(), lambda: self._hash_file(item.dst))

    def _submit_ranges(self, pool: ThreadPoolExecutor, item: FileItem) -> Iterator[Future[None]]:
        part = _part_name(item.dst)
        with _open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) as fd:
            try:
                os.ftruncate(fd, item.size)
            except OSError as exc:
                raise os_error(part, exc) from None
        offsets = list(range(0, item.size, RANGE))
        digests: list[str] = [""] * len(offsets)
        left = [len(offsets)]
        lock = threading.Lock()

        def one(index: int) -> None:
            self._check()
            offset = offsets[index]
            end = min(offset + RANGE, item.size)
            digests[index] = self._copy_range(item, part, offset, end)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                with _open(part, os.O_WRONLY) as fd:
                    self._set_attributes(fd, item, part)
                self._finish_file(
                    item, part, _combine(digests), lambda: self._hash_ranges(item.dst, offsets, item.size)
                )

        for index in range(len(offsets)):
            yield pool.submit(one, index)

    def _copy_range(self, item: FileItem, part: str, offset: int, end: int) -> str:
        buf = self._buffer()
        digest = new_hash()
        with _open(item.src, os.O_RDONLY) as src, _open(part, os.O_WRONLY) as dst:
            position = offset
            while position < end:
                want = min(CHUNK, end - position)
                try:
                    n = os.preadv(src, [buf[:want]], position)
                except OSError as exc:
                    raise os_error(item.src, exc) from None
                if n == 0:
                    raise MoveError(f"{item.src}: the file shrank while it was being copied")
                chunk = buf[:n]
                digest.update(chunk)
                written = 0
                while written < n:
                    try:
                        written += os.pwrite(dst, chunk[written:], position + written)
                    except OSError as exc:
                        raise os_error(part, exc) from None
                position += n
                self._add(bytes_done=n)
                self._check()
        return str(digest.hexdigest())

    def _set_attributes(self, fd: int, item: FileItem, part: str) -> None:
        try:
            os.fchmod(fd, item.mode)
            os.utime(fd, ns=(item.atime_ns, item.mtime_ns))
        except OSError as exc:
            raise os_error(part, exc) from None

    def _finish_file(self, item: FileItem, part: str, digest: str, reread: Callable[[], str]) -> None:
        try:
            _replace(part, item.dst)
        except OSError as exc:
            raise os_error(item.dst, exc) from None
        if self.verify:
            again = reread()
            if again != digest:
                raise MoveError(
                    f"{item.dst}: checksum mismatch after copying (the copy is not what was read)"
                )
        try:
            st = os.lstat(item.dst)
        except OSError as exc:
            raise os_error(item.dst, exc) from None
        self._add(files_done=1, checksums_verified=1 if self.verify else 0)
        self.on_verified(item.dst, (st.st_size, st.st_mtime_ns, item.size, item.mtime_ns, digest))

    def _hash_file(self, path: str) -> str:
        buf = self._buffer()
        digest = new_hash()
        with _open(path, os.O_RDONLY) as fd:
            while True:
                try:
                    n = os.readv(fd, [buf])
                except OSError as exc:
                    raise os_error(path, exc) from None
                if n == 0:
                    return str(digest.hexdigest())
                digest.update(buf[:n])
                self._check()

    def _hash_ranges(self, path: str, offsets: list[int], size: int) -> str:
        buf = self._buffer()
        digests = []
        with _open(path, os.O_RDONLY) as fd:
            for offset in offsets:
                end = min(offset + RANGE, size)
                digest = new_hash()
                position = offset
                while position < end:
                    n = os.preadv(fd, [buf[: min(CHUNK, end - position)]], position)
                    if n == 0:
                        break
                    digest.update(buf[:n])
                    position += n
                    self._check()
                digests.append(str(digest.hexdigest()))
        return _combine(digests)


def _combine(digests: list[str]) -> str:
    if len(digests) == 1:
        return digests[0]
    outer = new_hash()
    for d in digests:
        outer.update(bytes.fromhex(d))
    return str(outer.hexdigest())


def _part_name(dst: str) -> str:
    directory, name = posixpath.split(dst)
    return posixpath.join(directory, f".{name}{PART_SUFFIX}"[-255:])


def _replace(part: str, dst: str) -> None:
    """Rename ``part`` onto ``dst``, unless ``dst`` is a directory (rename would fail or nest)."""
    try:
        os.rename(part, dst)
    except IsADirectoryError:
        os.unlink(part)
        raise OSError(errno.EISDIR, "a directory is in the way", dst) from None


@contextlib.contextmanager
def _open(path: str, flags: int, mode: int = 0o600) -> Iterator[int]:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MoveError(f"{path} is a symbolic link; it is not followed") from None
        raise os_error(path, exc) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview, path: str) -> None:
    written = 0
    while written < len(data):
        try:
            written += os.write(fd, data[written:])
        except OSError as exc:
            raise os_error(path, exc) from None
