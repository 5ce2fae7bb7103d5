"""What a copy consists of: the source walked without following links, and the files a resume skips.

The walk opens every directory relative to its parent with ``O_NOFOLLOW`` and lists it with
``scandir`` on the descriptor, so no link in the source is ever followed; links are recorded as links.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from slurmlink.mover.paths import error, open_below, open_path
from slurmlink.mover.spec import MoveError
from slurmlink.mover.targets import Target


@dataclass
class FileItem:
    root: int  # index of the copy root (see Root)
    rel_dir: str  # "" for the root's own directory, else "a/b"
    src_name: str
    dst_name: str
    size: int
    mode: int
    atime_ns: int
    mtime_ns: int

    def rel(self, name: str) -> str:
        return f"{self.rel_dir}/{name}" if self.rel_dir else name


@dataclass
class LinkItem:
    root: int
    rel_dir: str
    src_name: str
    dst_name: str
    target: str
    atime_ns: int
    mtime_ns: int


@dataclass
class DirItem:
    root: int
    rel: str
    mode: int
    atime_ns: int
    mtime_ns: int


@dataclass
class Root:
    """Where one target's entries are read from and written to.

    A ``tree`` target's roots are its source and destination directories; a ``file`` target's roots
    are the directories holding its source and destination files.
    """

    source: str
    destination: str
    tree: bool
    #: The source directory's own mode and times, applied to a destination root the copy creates.
    top: DirItem | None = None


@dataclass
class Plan:
    roots: list[Root] = field(default_factory=list)
    files: list[FileItem] = field(default_factory=list)
    links: list[LinkItem] = field(default_factory=list)
    directories: list[DirItem] = field(default_factory=list)
    specials: list[str] = field(default_factory=list)
    skipped: list[FileItem] = field(default_factory=list)

    def source_path(self, root: int, rel_dir: str, name: str) -> str:
        return _join(self.roots[root].source, rel_dir, name)

    def destination_path(self, root: int, rel_dir: str, name: str) -> str:
        return _join(self.roots[root].destination, rel_dir, name)


def _join(base: str, rel_dir: str, name: str) -> str:
    return posixpath.join(base, rel_dir, name) if rel_dir else posixpath.join(base, name)


def open_rel(root_fd: int, rel: str, base: str, *, create: bool = False) -> int:
    """Directory ``rel`` below ``root_fd``, each step without following links."""
    return open_below(root_fd, rel, base, create=create)


def make_plan(targets: list[Target], uid: int) -> Plan:
    """Walk every target's source; nothing is written."""
    plan = Plan()
    for target in targets:
        index = len(plan.roots)
        if target.kind == "tree":
            plan.roots.append(Root(target.source, target.destination, tree=True))
            _walk_tree(plan, index, uid)
        else:
            src_dir, _, src_name = target.source.rpartition("/")
            dst_dir, _, dst_name = target.destination.rpartition("/")
            plan.roots.append(Root(src_dir or "/", dst_dir or "/", tree=False))
            fd = open_path(src_dir or "/", uid)
            try:
                st = os.stat(src_name, dir_fd=fd, follow_symlinks=False)
                _add(plan, index, "", src_name, dst_name, st, fd)
            except OSError as exc:
                raise error(target.source, exc) from exc
            finally:
                os.close(fd)
    return plan


def _walk_tree(plan: Plan, index: int, uid: int) -> None:
    root = plan.roots[index]
    root_fd = open_path(root.source, uid)
    try:
        st = os.fstat(root_fd)
        root.top = DirItem(index, "", stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
        pending = [""]
        while pending:
            rel = pending.pop()
            fd = open_rel(root_fd, rel, root.source)
            try:
                for name, st in _entries(fd, _join(root.source, "", rel) if rel else root.source):
                    if stat.S_ISDIR(st.st_mode):
                        child = f"{rel}/{name}" if rel else name
                        plan.directories.append(
                            DirItem(index, child, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
                        )
                        pending.append(child)
                    else:
                        _add(plan, index, rel, name, name, st, fd)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    # Parents before children, whatever order the stack visited them in.
    plan.directories.sort(key=lambda d: (d.root, d.rel.count("/"), d.rel))


def _entries(fd: int, path: str) -> Iterator[tuple[str, os.stat_result]]:
    try:
        with os.scandir(fd) as listing:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in listing]
    except OSError as exc:
        raise error(path, exc) from exc
    return iter(sorted(entries))


def _add(plan: Plan, index: int, rel: str, src_name: str, dst_name: str, st: os.stat_result, fd: int) -> None:
    if stat.S_ISREG(st.st_mode):
        plan.files.append(
            FileItem(
                index,
                rel,
                src_name,
                dst_name,
                st.st_size,
                stat.S_IMODE(st.st_mode),
                st.st_atime_ns,
                st.st_mtime_ns,
            )
        )
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(src_name, dir_fd=fd)
        plan.links.append(LinkItem(index, rel, src_name, dst_name, target, st.st_atime_ns, st.st_mtime_ns))
    else:
        plan.specials.append(plan.source_path(index, rel, src_name))


def drop_done(plan: Plan, done: dict[str, dict[str, Any]], uid: int) -> None:
    """Move files a journal shows verified, and unchanged since on both sides, to ``plan.skipped``."""
    if not done:
        return
    keep: list[FileItem] = []
    dir_fds: dict[tuple[int, str], int | None] = {}
    try:
        for item in plan.files:
            record = done.get(plan.destination_path(item.root, item.rel_dir, item.dst_name))
            if record is None or record.get("size") != item.size or record.get("smt") != item.mtime_ns:
                keep.append(item)
                continue
            key = (item.root, item.rel_dir)
            if key not in dir_fds:
                dir_fds[key] = _dest_dir(plan, item, uid)
            fd = dir_fds[key]
            try:
                st = None if fd is None else os.stat(item.dst_name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if (
                st is not None
                and stat.S_ISREG(st.st_mode)
                and (st.st_size, st.st_mtime_ns)
                == (
                    record.get("size"),
                    record.get("dmt"),
                )
            ):
                plan.skipped.append(item)
            else:
                keep.append(item)
    finally:
        for fd in dir_fds.values():
            if fd is not None:
                os.close(fd)
    plan.files = keep


def _dest_dir(plan: Plan, item: FileItem, uid: int) -> int | None:
    try:
        root_fd = open_path(plan.roots[item.root].destination, uid)
    except MoveError:
        return None
    try:
        return open_rel(root_fd, item.rel_dir, plan.roots[item.root].destination)
    except MoveError:
        return None
    finally:
        os.close(root_fd)
