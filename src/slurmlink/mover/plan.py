"""What a copy will do: the directories, files and links to create, found by walking the source.

The walk never follows a symbolic link: a link in the source becomes a link in the destination, and a
directory reached only through a link is not entered. Devices, fifos and sockets are counted and left
out. Runs as the job's user, so what it cannot read fails here, with the path.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field

from slurmlink.mover.spec import CopySpec, MoveError


@dataclass(frozen=True)
class FileItem:
    src: str
    dst: str
    size: int
    mode: int
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True)
class DirItem:
    dst: str
    mode: int | None  # None: made to hold the copy, not a copy of a source directory
    atime_ns: int = 0
    mtime_ns: int = 0
    #: A parent outside the burst buffers: a symbolic link to a directory there will do (as for cp).
    link_ok: bool = False


@dataclass(frozen=True)
class LinkItem:
    dst: str
    target: str
    atime_ns: int
    mtime_ns: int


@dataclass
class Plan:
    dirs: list[DirItem] = field(default_factory=list)  # parents before children
    files: list[FileItem] = field(default_factory=list)
    links: list[LinkItem] = field(default_factory=list)
    specials: int = 0
    #: Where each source went (its copy's root). "Into the destination if it is a directory" depends
    #: on what exists, which the copy itself changes: a resumed copy reuses the first run's choice.
    targets: list[str] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)


def os_error(path: str, exc: OSError) -> MoveError:
    """``<path>: <reason>``, the way a shell says it."""
    return MoveError(f"{path}: {exc.strerror or exc}")


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise os_error(path, exc) from None


def _exists_as_dir(path: str, follow: bool) -> bool:
    """Whether ``path`` is a directory; a symbolic link to one counts only with ``follow`` (never
    inside a burst buffer, where a planted link could lead the copy out of it)."""
    try:
        return stat.S_ISDIR((os.stat(path) if follow else os.lstat(path)).st_mode)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error(path, exc) from None


def _clean(path: str, what: str) -> str:
    if "\0" in path:
        raise MoveError(f"{what} {path!r} is not a valid path")
    parts = path.split("/")
    if ".." in parts:
        raise MoveError(f"{what} {path}: '..' is not allowed")
    return path


def build(spec: CopySpec, targets: list[str] | None = None) -> Plan:
    """The plan of ``spec``; MoveError if the source is missing, unreadable or of the wrong kind.

    ``targets``: the roots an earlier run of the same copy chose (``Plan.targets``), if any.
    """
    source = _clean(spec.source, "source")
    destination = _clean(spec.destination, "destination")
    if not source.startswith("/") or not destination.startswith("/"):
        raise MoveError("source and destination must be absolute paths")
    plan = Plan()
    follow = spec.buffer_side != "destination"
    if spec.mode == "list":
        pairs = read_list(source, destination, spec.buffer_side)
        mode = "auto"
    elif spec.mode in ("auto", "file", "directory"):
        pairs, mode = [(source, destination)], spec.mode
    else:
        raise MoveError(f"unknown copy mode {spec.mode!r}: use auto, file, directory or list")
    earlier = targets if targets is not None and len(targets) == len(pairs) else None
    for index, (src, dst) in enumerate(pairs):
        _add(plan, src, dst, mode, follow, earlier[index] if earlier else None)
    return plan


def _add(plan: Plan, source: str, destination: str, mode: str, follow: bool, earlier: str | None) -> None:
    st = _lstat(source.rstrip("/") or "/")
    into = destination.endswith("/")
    destination = destination.rstrip("/") or "/"
    name = posixpath.basename(source.rstrip("/"))
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir and mode == "file":
        raise MoveError(f"{source} is a directory; copy it with type=directory")
    if not is_dir and mode == "directory":
        raise MoveError(f"{source} is not a directory; copy it with type=file")
    if earlier is not None:
        root = earlier
    elif mode == "directory":
        root = destination
    else:  # cp -a: into an existing directory, else the destination becomes the copy
        inside = into or _exists_as_dir(destination, follow)
        root = posixpath.join(destination, name) if inside else destination
    plan.targets.append(root)
    _parents(plan, posixpath.dirname(root), follow)
    if is_dir:
        plan.dirs.append(DirItem(root, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns))
        _walk(plan, source.rstrip("/") or "/", root)
    else:
        _entry(plan, source, root, st)


def _parents(plan: Plan, directory: str, follow: bool) -> None:
    """Directories the copy needs that may not exist yet (``mkdir -p``), outermost first."""
    missing = []
    while directory not in ("", "/") and not _exists_as_dir(directory, follow):
        missing.append(directory)
        directory = posixpath.dirname(directory)
    plan.dirs.extend(DirItem(d, None, link_ok=follow) for d in reversed(missing))


def _entry(plan: Plan, src: str, dst: str, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        plan.files.append(
            FileItem(src, dst, st.st_size, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
        )
    elif stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(src)
        except OSError as exc:
            raise os_error(src, exc) from None
        plan.links.append(LinkItem(dst, target, st.st_atime_ns, st.st_mtime_ns))
    elif stat.S_ISDIR(st.st_mode):
        plan.dirs.append(DirItem(dst, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns))
    else:
        plan.specials += 1


def _walk(plan: Plan, src_root: str, dst_root: str) -> None:
    pending = [(src_root, dst_root)]
    while pending:
        src_dir, dst_dir = pending.pop()
        try:
            with os.scandir(src_dir) as entries:
                found = sorted(entries, key=lambda e: e.name)
                stats = [(e, e.stat(follow_symlinks=False)) for e in found]
        except OSError as exc:
            raise os_error(getattr(exc, "filename", None) or src_dir, exc) from None
        subdirs = []
        for entry, st in stats:
            dst = posixpath.join(dst_dir, entry.name)
            _entry(plan, entry.path, dst, st)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((entry.path, dst))
        pending.extend(reversed(subdirs))


def read_list(list_path: str, destination: str, buffer_side: str | None) -> list[tuple[str, str]]:
    """The ``SOURCE DESTINATION`` pairs of a list file (blank lines and ``#`` comments skipped)."""
    try:
        with open(list_path, "rb", opener=_nofollow) as handle:
            raw = handle.read(16 << 20)
    except OSError as exc:
        raise os_error(list_path, exc) from None
    base = posixpath.dirname(list_path)
    pairs = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{list_path} line {number}"
        if len(words) != 2:
            raise MoveError(f"{where}: expected 'SOURCE DESTINATION', found {len(words)} word(s)")
        src, dst = words
        for side, path in (("source", src), ("destination", dst)):
            if ".." in path.split("/"):
                raise MoveError(f"{where}: '..' is not allowed in {path}")
            if side == buffer_side and path.startswith("/"):
                raise MoveError(f"{where}: {path} must be relative to the burst buffer")
        src = src if src.startswith("/") else posixpath.join(base, src)
        dst = dst if dst.startswith("/") else posixpath.join(destination, dst)
        pairs.append((src, dst))
    return pairs


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)
