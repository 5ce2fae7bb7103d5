"""The data mover on real files, as a real unprivileged user (created with useradd), started as root."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.mover import CopySpec, MoveCancelled, MoveError, MoveProgress, copier, run_copy, shares, worker
from slurmlink.mover.journal import load
from slurmlink.mover.plan import make_plan
from slurmlink.mover.targets import Target
from support.unix_users import ensure_unix_user

pytestmark = pytest.mark.storage

USER = "slurmlink-mover"
OTHER = "slurmlink-mover2"
KIB = 1 << 10
MIB = 1 << 20


@pytest.fixture
def ids() -> tuple[int, int]:
    account = ensure_unix_user(USER)
    return account.pw_uid, account.pw_gid


def own(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, gid)


def make_tree(root: Path, uid: int, gid: int) -> None:
    """Nested directories, files of several modes and times, links (one to /etc), a fifo."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "ro").mkdir()
    (root / "a" / "one").write_bytes(b"1" * 1000)
    (root / "a" / "b" / "two").write_bytes(os.urandom(300 * KIB))
    (root / "a" / "b" / "c" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "a" / "b" / "c" / "run.sh").chmod(0o750)
    (root / "ro" / "kept").write_bytes(b"")
    (root / "secret").write_bytes(b"mine")
    (root / "secret").chmod(0o600)
    (root / "etc").symlink_to("/etc")
    (root / "a" / "to-one").symlink_to("one")
    os.mkfifo(root / "a" / "fifo")
    own(root, uid, gid)
    for n, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        if not p.is_symlink():
            os.utime(p, ns=(1_600_000_000_123_456_789 + n, 1_500_000_000_987_654_321 + n))
    (root / "ro").chmod(0o555)
    os.utime(root / "ro", ns=(1_600_000_001_000_000_001, 1_500_000_001_000_000_001))


def entries(root: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(root)): p.lstat() for p in root.rglob("*")}


def assert_same_tree(
    src: Path, dst: Path, uid: int, before: dict[str, os.stat_result], atimes: bool = True
) -> None:
    """Same names, contents, modes, times (``before`` the copy read them) and links; fifos left out;
    all owned by ``uid``."""
    want = {k: v for k, v in before.items() if not stat.S_ISFIFO(v.st_mode)}
    got = entries(dst)
    assert sorted(got) == sorted(want)
    for rel, s in want.items():
        d = got[rel]
        assert stat.S_IFMT(d.st_mode) == stat.S_IFMT(s.st_mode), rel
        assert d.st_uid == uid, rel
        if stat.S_ISLNK(s.st_mode):
            assert os.readlink(dst / rel) == os.readlink(src / rel)
            continue
        assert stat.S_IMODE(d.st_mode) == stat.S_IMODE(s.st_mode), rel
        assert d.st_mtime_ns == s.st_mtime_ns, rel
        if stat.S_ISREG(s.st_mode):
            assert d.st_atime_ns == s.st_atime_ns or not atimes, rel  # (listing a directory sets its atime)
            assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel


@pytest.fixture
def dirs(work_dir: Path, ids: tuple[int, int]) -> tuple[Path, Path]:
    src, dst = work_dir / "src", work_dir / "dst"
    src.mkdir()
    dst.mkdir()
    os.chown(dst, *ids)
    return src, dst


def spec(
    source: Path | str, destination: Path | str, ids: tuple[int, int], mode: str = "auto", **kw: int
) -> CopySpec:
    return CopySpec(str(source), str(destination), mode, ids[0], ids[1], **kw)  # type: ignore[arg-type]


def test_tree_is_copied_with_modes_times_and_links_as_the_user(
    dirs: tuple[Path, Path], ids: tuple[int, int]
) -> None:
    src, dst = dirs
    make_tree(src, *ids)
    before = entries(src)
    seen: list[MoveProgress] = []
    final = run_copy(spec(src, dst / "out", ids), progress=lambda p: seen.append(MoveProgress(**vars(p))))
    assert_same_tree(src, dst / "out", ids[0], before)
    assert os.readlink(dst / "out" / "etc") == "/etc"
    assert (dst / "out").stat().st_mtime_ns == src.stat().st_mtime_ns
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    assert final.files_total == final.files_done == final.checksums_verified == len(files) == 5
    assert (final.links, final.specials_skipped, final.directories) == (2, 1, 5)
    assert final.bytes_done == final.bytes_total == sum(p.stat().st_size for p in files)
    assert seen[-1].files_done == len(files)
    assert not list((dst / "out").rglob("*.slurmlink-part"))


def test_a_file_the_user_cannot_read_fails_the_copy_naming_it(
    dirs: tuple[Path, Path], ids: tuple[int, int]
) -> None:
    src, dst = dirs
    make_tree(src, *ids)
    os.chown(src / "a" / "b" / "two", 0, 0)
    (src / "a" / "b" / "two").chmod(0o600)
    with pytest.raises(MoveError, match=f"{src}/a/b/two: Permission denied"):
        run_copy(spec(src, dst / "out", ids, workers=1))
    assert all(st.st_uid == ids[0] for st in entries(dst).values())
    assert not (dst / "out" / "a" / "b" / "two").exists()


def test_root_is_never_the_copying_user(dirs: tuple[Path, Path]) -> None:
    src, dst = dirs
    (src / "f").write_text("x")
    with pytest.raises(MoveError, match="copies never run as root"):
        run_copy(spec(src / "f", dst, (0, 0)))
    assert list(dst.iterdir()) == []


def test_file_mode_into_a_directory_or_to_a_name(dirs: tuple[Path, Path], ids: tuple[int, int]) -> None:
    src, dst = dirs
    (src / "data.bin").write_bytes(os.urandom(5000))
    own(src, *ids)
    run_copy(spec(src / "data.bin", dst, ids, "file"))
    run_copy(spec(src / "data.bin", f"{dst}/sub/", ids, "file"))
    run_copy(spec(src / "data.bin", dst / "renamed", ids, "file"))
    for path in (dst / "data.bin", dst / "sub" / "data.bin", dst / "renamed"):
        assert path.read_bytes() == (src / "data.bin").read_bytes()
        assert path.stat().st_uid == ids[0]
    with pytest.raises(MoveError, match=f"{src}: is a directory"):
        run_copy(spec(src, dst, ids, "file"))
    # the user's own link to a directory is followed as cp would, into the directory
    (dst / "sub-link").symlink_to(dst / "sub")
    os.lchown(dst / "sub-link", *ids)
    (dst / "sub" / "data.bin").unlink()
    run_copy(spec(src / "data.bin", dst / "sub-link", ids, "file"))
    assert (dst / "sub-link").is_symlink()
    assert (dst / "sub" / "data.bin").read_bytes() == (src / "data.bin").read_bytes()


def test_directory_mode_copies_the_contents(dirs: tuple[Path, Path], ids: tuple[int, int]) -> None:
    src, dst = dirs
    make_tree(src, *ids)
    before = entries(src)
    run_copy(spec(src, dst, ids, "directory"))
    assert_same_tree(src, dst, ids[0], before)


def test_auto_mode_into_an_existing_directory(dirs: tuple[Path, Path], ids: tuple[int, int]) -> None:
    src, dst = dirs
    make_tree(src, *ids)
    before = entries(src)
    run_copy(spec(src, dst, ids))
    assert_same_tree(src, dst / "src", ids[0], before)


def test_list_mode_copies_each_pair(dirs: tuple[Path, Path], ids: tuple[int, int]) -> None:
    src, dst = dirs
    (src / "x").write_bytes(b"x" * 10)
    (src / "y").write_bytes(b"y" * 20)
    (src / "list").write_text(f"# stage these\n{src}/x {dst}/\n\n{src}/y {dst}/deep/why\n")
    own(src, *ids)
    done = run_copy(spec(src / "list", dst, ids, "list"))
    assert (dst / "x").read_bytes() == b"x" * 10
    assert (dst / "deep" / "why").read_bytes() == b"y" * 20
    assert done.files_done == 2
    (src / "list").chmod(0o600)
    os.chown(src / "list", 0, 0)
    with pytest.raises(MoveError, match=f"{src}/list: Permission denied"):
        run_copy(spec(src / "list", dst, ids, "list"))


def test_a_checksum_mismatch_fails_the_copy_naming_the_file(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in-process: the read-back digest is made to differ."""
    src, dst = dirs
    (src / "f").write_bytes(os.urandom(10000))
    monkeypatch.setattr(copier, "dest_digest", lambda digest: b"\0" * 16)
    payload = {"spec": spec(src, dst, (os.geteuid(), os.getegid())).to_json()}
    with pytest.raises(MoveError, match=f"{dst}/src/f: checksum mismatch"):
        worker.execute(payload, lambda record: None, threading.Event())
    assert not (dst / "src" / "f").exists()
    assert list((dst / "src").iterdir()) == []


def test_in_place_copies_write_each_small_file_under_its_own_name(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in-process: renames are counted, then the read-back digest is made to differ."""
    src, dst = dirs
    me = (os.geteuid(), os.getegid())
    for name in ("a", "b", "c"):
        (src / name).write_bytes(os.urandom(5000))
    renamed: list[str] = []
    real_rename = copier._rename

    def counting_rename(dst_dir: int, tmp: str, name: str, path: str) -> None:
        renamed.append(name)
        real_rename(dst_dir, tmp, name, path)

    monkeypatch.setattr(copier, "_rename", counting_rename)
    worker.execute({"spec": spec(src, dst / "atomic", me).to_json()}, lambda record: None, threading.Event())
    assert sorted(renamed) == ["a", "b", "c"]  # by default each file is renamed into place once complete

    # In place: no renames, and a file a killed run left under a final name is replaced.
    renamed.clear()
    (dst / "fresh").mkdir()
    (dst / "fresh" / "b").write_bytes(b"cut short by a killed run")
    in_place = CopySpec(str(src), str(dst / "fresh"), "directory", *me, in_place=True)
    worker.execute({"spec": in_place.to_json()}, lambda record: None, threading.Event())
    assert renamed == []
    for name in ("a", "b", "c"):
        assert (dst / "fresh" / name).read_bytes() == (src / name).read_bytes()
    assert sorted(p.name for p in (dst / "fresh").iterdir()) == ["a", "b", "c"]

    # A file that fails its check is removed, not left half-right under its name.
    monkeypatch.setattr(copier, "dest_digest", lambda digest: b"\0" * 16)
    (dst / "again").mkdir()
    again = CopySpec(str(src / "a"), str(dst / "again" / "a"), "file", *me, in_place=True)
    with pytest.raises(MoveError, match=f"{dst}/again/a: checksum mismatch"):
        worker.execute({"spec": again.to_json()}, lambda record: None, threading.Event())
    assert list((dst / "again").iterdir()) == []


def default_acl(user: int, group: int, other: int) -> bytes:
    """A ``system.posix_acl_default`` value (the kernel's binary form): owner, group and other
    permissions for the directory's new entries."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, user), (0x04, group), (0x20, other)]  # user::, group::, other::
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, undefined) for tag, perm in entries)


MODES = {"shared": 0o664, "group": 0o640, "setuid": 0o4750, "setgid": 0o2750, "readonly": 0o444, "odd": 0o604}


@pytest.mark.parametrize("in_place", [False, True], ids=["atomic", "in-place"])
def test_modes_are_kept_whatever_the_umask_or_a_default_acl_would_give(
    dirs: tuple[Path, Path], ids: tuple[int, int], in_place: bool
) -> None:
    """Files are created with their final mode only where nothing takes bits from it: a umask of 027
    would clear 0664's group write and 0604's other read, a default ACL clears other bits; a write
    clears set-user-ID."""
    src, dst = dirs
    for name in MODES:
        (src / name).write_bytes(os.urandom(3000))
    own(src, *ids)
    for name, mode in MODES.items():
        (src / name).chmod(mode)
    with_acl = dst / "acl"
    with_acl.mkdir()
    os.chown(with_acl, *ids)
    os.setxattr(with_acl, "system.posix_acl_default", default_acl(7, 5, 0))
    new_file = with_acl / "probe"
    new_file.touch(0o666)
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o640  # the ACL, not the umask, decides
    new_file.unlink()
    old_umask = os.umask(0o027)
    try:
        for destination in (dst / "plain", with_acl / "out"):
            before = entries(src)
            run_copy(CopySpec(str(src), str(destination), "auto", *ids, in_place=in_place))
            assert_same_tree(src, destination, ids[0], before)
    finally:
        os.umask(old_umask)


def test_a_file_is_given_its_mode_after_creation_only_when_needed(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in-process: the chmods after creation are counted (umask 022)."""
    src, dst = dirs
    for name, mode in MODES.items():
        (src / name).write_bytes(b"x")
        (src / name).chmod(mode)
    chmods: list[int] = []
    real_fchmod = os.fchmod

    def counting_fchmod(fd: int, mode: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            chmods.append(mode)
        real_fchmod(fd, mode)

    monkeypatch.setattr(copier.os, "fchmod", counting_fchmod)
    old_umask = os.umask(0o022)
    try:
        payload = {"spec": spec(src, dst / "out", (os.geteuid(), os.getegid())).to_json()}
        worker.execute(payload, lambda record: None, threading.Event())
    finally:
        os.umask(old_umask)
    assert sorted(chmods) == sorted([0o664, 0o4750, 0o2750])
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (dst / "out").iterdir()} == MODES


def test_links_planted_in_the_destination_are_not_followed(
    dirs: tuple[Path, Path], ids: tuple[int, int], work_dir: Path
) -> None:
    src, dst = dirs
    (src / "sub").mkdir()
    (src / "sub" / "f").write_text("data")
    (src / "g").write_text("new")
    own(src, *ids)
    elsewhere = work_dir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target").write_text("old")
    own(elsewhere, *ids)
    (dst / "sub").symlink_to(elsewhere)
    os.lchown(dst / "sub", *ids)
    with pytest.raises(MoveError, match=f"{dst}/sub: is a symbolic link; it is not followed"):
        run_copy(spec(src, dst, ids, "directory"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target"]
    # a link where a file goes is replaced, its target left alone
    (dst / "sub").unlink()
    (dst / "g").symlink_to(elsewhere / "target")
    run_copy(spec(src, dst, ids, "directory"))
    assert not (dst / "g").is_symlink() and (dst / "g").read_text() == "new"
    assert (elsewhere / "target").read_text() == "old"
    # a link on the way to the destination, owned by someone else, is not followed either
    other = ensure_unix_user(OTHER)
    (dst / "via").symlink_to(elsewhere)
    os.lchown(dst / "via", other.pw_uid, other.pw_gid)
    with pytest.raises(MoveError, match=f"{dst}/via: is a symbolic link owned by another user"):
        run_copy(spec(src / "g", dst / "via" / "g", ids, "file"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target"]


def test_too_little_space_fails_before_copying(
    dirs: tuple[Path, Path], ids: tuple[int, int], work_dir: Path
) -> None:
    src, _ = dirs
    small = work_dir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={ids[0]}", "tmpfs", str(small)], check=True)
    try:
        (src / "big").write_bytes(b"\1" * (2 * MIB))
        own(src, *ids)
        with pytest.raises(
            MoveError, match=f"not enough space: the copy needs 2.0 MiB and the file system of {small}"
        ):
            run_copy(spec(src, small / "out", ids))
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def worker_pids() -> list[int]:
    """This process's mover workers, and the processes they forked to copy shares of the files."""
    movers: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if b"slurmlink.mover.worker" in cmdline:
            movers[int(entry.name)] = ppid
    ours = {pid for pid, ppid in movers.items() if ppid == os.getpid()}
    return sorted(ours | {pid for pid, ppid in movers.items() if ppid in ours})


def test_a_rerun_after_kill_9_skips_what_was_verified(
    dirs: tuple[Path, Path], ids: tuple[int, int], work_dir: Path
) -> None:
    src, dst = dirs
    for d in range(6):
        (src / f"d{d}").mkdir()
        for f in range(50):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(256 * KIB))
    own(src, *ids)
    before_all = entries(src)
    journal = work_dir / "journal"
    copy = spec(src, dst / "out", ids, workers=1)

    def kill_midway(p: MoveProgress) -> None:
        if p.files_done >= 30:
            for pid in worker_pids():
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(MoveError, match="killed by signal 9"):
        run_copy(copy, journal=journal, progress=kill_midway, interval=0)
    _, verified = load(journal, copy)
    assert 30 <= len(verified) < 300
    before = {r["dst"]: os.stat(r["dst"]) for r in verified}
    final = run_copy(copy, journal=journal)
    assert final.files_skipped == len(verified)
    assert final.files_done == 300 - len(verified)
    assert final.bytes_done == final.bytes_total == 300 * 256 * KIB
    for path, st in before.items():
        now = os.stat(path)
        assert (now.st_ino, now.st_ctime_ns) == (st.st_ino, st.st_ctime_ns), path
    assert_same_tree(src, dst / "out", ids[0], before_all, atimes=False)  # the first run read them
    assert not list((dst / "out").rglob("*.slurmlink-part"))


@pytest.fixture
def big_file(dirs: tuple[Path, Path], ids: tuple[int, int]) -> Iterator[Path]:
    src, _ = dirs
    path = src / "big"
    # allocated, not sparse (fast to make; the mover reads and writes every byte of it)
    subprocess.run(["fallocate", "--length", "2GiB", str(path)], check=True)
    own(src, *ids)
    yield path


def test_cancel_stops_a_large_copy_within_two_seconds(
    dirs: tuple[Path, Path], ids: tuple[int, int], big_file: Path
) -> None:
    _, dst = dirs
    cancel = threading.Event()
    started = threading.Event()
    outcome: list[BaseException] = []

    def copy() -> None:
        try:
            run_copy(
                spec(big_file, dst, ids, "file"), cancel=cancel, progress=lambda p: started.set(), interval=0
            )
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=copy)
    thread.start()
    assert started.wait(30)
    t0 = time.monotonic()
    cancel.set()
    thread.join(10)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], MoveCancelled)
    assert worker_pids() == []
    assert not (dst / "big").exists()
    assert not list(dst.glob("*.slurmlink-part"))


# ---- many small files: one process per CPU ----------------------------------------------------------

#: Directories and files per directory of the small-file tree: enough files that the copy is split.
SMALL_DIRS, SMALL_FILES = 12, 100


def small_tree(root: Path, uid: int, gid: int) -> None:
    for d in range(SMALL_DIRS):
        (root / f"d{d:02}").mkdir(parents=True)
        for f in range(SMALL_FILES):
            (root / f"d{d:02}" / f"f{f:03}").write_bytes(os.urandom(1000 + 37 * f))
    own(root, uid, gid)


def expected_processes() -> int:
    return min(shares.MAX_SHARES, shares.PER_CPU * len(os.sched_getaffinity(0)))


def test_many_small_files_are_copied_by_two_processes_per_cpu(
    dirs: tuple[Path, Path], ids: tuple[int, int]
) -> None:
    want = expected_processes()
    src, dst = dirs
    small_tree(src, *ids)
    assert SMALL_DIRS * SMALL_FILES >= shares.MIN_SMALL_FILES
    before = entries(src)
    seen: list[int] = []
    final = run_copy(
        spec(src, dst / "out", ids), progress=lambda p: seen.append(len(worker_pids())), interval=0
    )
    assert max(seen) == want  # the worker and the processes it forked, all copying at once
    assert worker_pids() == []
    assert_same_tree(src, dst / "out", ids[0], before)
    files = [p for p in src.rglob("*") if p.is_file()]
    assert final.files_total == final.files_done == final.checksums_verified == len(files)
    assert final.bytes_done == final.bytes_total == sum(p.stat().st_size for p in files)
    assert not list((dst / "out").rglob("*.slurmlink-part"))


def test_a_failure_in_a_forked_process_fails_the_copy_and_stops_the_others(
    dirs: tuple[Path, Path], ids: tuple[int, int]
) -> None:
    want = expected_processes()
    src, dst = dirs
    small_tree(src, *ids)
    parts = shares.split(make_plan([Target(str(src), str(dst / "out"), "tree")], ids[0]).files, want)
    first = parts[1][0]  # a file the first process does not copy
    unreadable = src / first.rel_dir / first.src_name
    os.chown(unreadable, 0, 0)
    unreadable.chmod(0o600)
    with pytest.raises(MoveError, match=f"{unreadable}: Permission denied"):
        run_copy(spec(src, dst / "out", ids))
    assert worker_pids() == []
    assert not list((dst / "out").rglob("*.slurmlink-part"))
    assert not (dst / "out" / first.rel_dir / first.dst_name).exists()
    assert all(st.st_uid == ids[0] for st in entries(dst).values())


def test_a_cancel_stops_every_process_of_a_split_copy(dirs: tuple[Path, Path], ids: tuple[int, int]) -> None:
    expected_processes()
    src, dst = dirs
    small_tree(src, *ids)
    cancel = threading.Event()
    seen: list[int] = []

    def first_batch(p: MoveProgress) -> None:
        if p.files_done and not cancel.is_set():
            seen.append(len(worker_pids()))
            cancel.set()

    with pytest.raises(MoveCancelled):
        run_copy(spec(src, dst / "out", ids), cancel=cancel, progress=first_batch, interval=0)
    assert seen and seen[0] >= 2  # it was split when the cancel came
    assert worker_pids() == []
    assert not list((dst / "out").rglob("*.slurmlink-part"))
    copied = [p for p in (dst / "out").rglob("f*") if p.is_file()]
    assert len(copied) < SMALL_DIRS * SMALL_FILES
