"""The job bridge's file operations on real files, run by the real helper as real Unix users.

The test process is root, as the server is: every operation starts ``slurmlink.bridge.asuser``,
which becomes the user. Job directories live under /var/tmp, in a directory the users can traverse
(pytest's tmp_path may sit below a 0700 directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from slurmlink.bridge.files import (
    CollectedFile,
    FileMissing,
    FilesError,
    UnpackLimits,
    collect,
    copy_in,
    copy_out,
    make_job_dir,
    read_stream,
    remove_job_dir,
    unpack,
    write_file,
)
from slurmlink.bridge.owner import Owner
from support.storage import world_searchable_dir
from support.unix_users import ensure_unix_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root")

ALICE, BOB = "slurmlink-alice", "slurmlink-bob"


@pytest.fixture(scope="module")
def alice() -> Owner:
    ensure_unix_user(ALICE)
    return Owner.of_login(ALICE)


@pytest.fixture(scope="module")
def bob() -> Owner:
    ensure_unix_user(BOB)
    return Owner.of_login(BOB)


@pytest.fixture
def base() -> Iterator[Path]:
    path = world_searchable_dir("slurmlink-bridge-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def job(alice: Owner, base: Path) -> Path:
    return asyncio.run(make_job_dir(alice, base / "jobs", "job-1"))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def owned_link(target: str, path: Path, owner: Owner) -> None:
    """A link the user planted (made here as root, then handed over)."""
    path.symlink_to(target)
    os.lchown(path, owner.uid, owner.gid)


def owned_dir(path: Path, owner: Owner, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner.uid, owner.gid)
    path.chmod(mode)
    return path


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def tar_bytes(entries: list[tuple[str, bytes | None, bytes]], compression: str = "gz") -> bytes:
    """(name, type, data) entries: type None for a file (executable if it ends in .sh), else a tarfile
    type (DIRTYPE, SYMTYPE...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = kind
                info.mode = 0o755
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = data.decode()
                tar.addfile(info)
    return buf.getvalue()


def zip_bytes(entries: list[tuple[str, bytes, int]]) -> bytes:
    """(name, data, unix mode) entries, deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buf.getvalue()


def helpers() -> list[int]:
    """This process's helper children still alive."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"slurmlink.bridge.asuser" in cmdline:
            found.append(int(pid))
    return found


# -- make_job_dir -------------------------------------------------------------------------------


def test_job_directories_are_made_for_the_user_and_again_without_harm(alice: Owner, base: Path) -> None:
    root = base / "jobs"
    job = run(make_job_dir(alice, root, "job-1"))
    assert job == root / str(alice.uid) / "job-1"
    top, mine, own = os.stat(root), os.stat(root / str(alice.uid)), os.stat(job)
    assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (0, 0o711)
    assert (mine.st_uid, mine.st_gid, stat.S_IMODE(mine.st_mode)) == (alice.uid, alice.gid, 0o700)
    assert (own.st_uid, own.st_gid, stat.S_IMODE(own.st_mode)) == (alice.uid, alice.gid, 0o700)
    run(write_file(alice, job, "kept.txt", b"kept"))
    assert run(make_job_dir(alice, root, "job-1")) == job
    assert (job / "kept.txt").read_bytes() == b"kept"


def test_a_link_planted_as_the_users_directory_is_refused(alice: Owner, base: Path) -> None:
    root = base / "jobs"
    root.mkdir(mode=0o711)
    elsewhere = owned_dir(base / "elsewhere", alice, 0o700)
    owned_link(str(elsewhere), root / str(alice.uid), alice)
    with pytest.raises(FilesError, match=f"{alice.uid}: is a symbolic link; refused"):
        run(make_job_dir(alice, root, "job-1"))
    assert os.listdir(elsewhere) == []


def test_a_link_planted_as_the_job_directory_is_refused(alice: Owner, base: Path) -> None:
    root = base / "jobs"
    run(make_job_dir(alice, root, "job-1"))
    target = owned_dir(base / "target", alice, 0o700)
    owned_link(str(target), root / str(alice.uid) / "job-2", alice)
    with pytest.raises(FilesError, match="job-2: is a symbolic link; it is not followed"):
        run(make_job_dir(alice, root, "job-2"))


def test_another_users_directory_is_refused(alice: Owner, bob: Owner, base: Path) -> None:
    root = base / "jobs"
    root.mkdir(mode=0o711)
    owned_dir(root / str(alice.uid), bob, 0o700)
    with pytest.raises(FilesError, match=f"belongs to uid {bob.uid}, not to {alice.login}"):
        run(make_job_dir(alice, root, "job-1"))


@pytest.mark.parametrize(
    ("mode", "message"),
    [(0o777, "must not be writable by group or others"), (0o700, r"must be searchable by others \(0711\)")],
)
def test_a_root_others_may_write_or_not_reach_is_refused(
    alice: Owner, base: Path, mode: int, message: str
) -> None:
    root = base / "jobs"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(FilesError, match=message):
        run(make_job_dir(alice, root, "job-1"))
    assert os.listdir(root) == []


# -- write_file ---------------------------------------------------------------------------------


def test_written_files_belong_to_the_user(alice: Owner, job: Path) -> None:
    size, digest = run(write_file(alice, job, "in/deep/data.bin", b"x" * 1000, mode=0o640))  # type: ignore[misc]
    assert (size, digest) == (1000, hashlib.sha256(b"x" * 1000).hexdigest())
    st = os.stat(job / "in/deep/data.bin")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (alice.uid, alice.gid, 0o640)
    for d in ("in", "in/deep"):
        st = os.stat(job / d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o700)
    assert listing(job) == ["in", "in/deep", "in/deep/data.bin"]  # no temporary file left


def test_a_file_the_server_kept_is_streamed_and_an_iterator_too(alice: Owner, base: Path, job: Path) -> None:
    private = base / "uploads"
    private.mkdir(mode=0o700)
    upload = private / "up-1"
    upload.write_bytes(os.urandom(3 << 20))
    upload.chmod(0o600)
    data = upload.read_bytes()
    assert run(write_file(alice, job, "upload", upload, sha256=hashlib.sha256(data).hexdigest()))[0] == len(
        data
    )  # type: ignore[index]
    assert (job / "upload").read_bytes() == data

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"", b"two"):
            yield piece

    run(write_file(alice, job, "pieces", pieces()))
    assert (job / "pieces").read_bytes() == b"one two"


def test_a_digest_mismatch_leaves_nothing(alice: Owner, job: Path) -> None:
    with pytest.raises(
        FilesError, match=r'"data": the data\'s SHA-256 is [0-9a-f]{64}, not the 0{64} expected'
    ):
        run(write_file(alice, job, "data", b"payload", sha256="0" * 64))
    assert listing(job) == []


def test_too_much_data_leaves_nothing(alice: Owner, job: Path) -> None:
    with pytest.raises(FilesError, match='"big": the data is larger than the 1024 bytes allowed'):
        run(write_file(alice, job, "big", b"y" * (4 << 20), max_bytes=1024))
    assert listing(job) == []
    run(write_file(alice, job, "exact", b"y" * 1024, max_bytes=1024))


def test_a_failing_source_leaves_nothing(alice: Owner, job: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"half of it"
        await asyncio.sleep(0.2)
        raise RuntimeError("the upload was cut")

    with pytest.raises(RuntimeError, match="cut"):
        run(write_file(alice, job, "partial", broken()))
    assert listing(job) == []
    assert helpers() == []


def test_writes_never_go_through_links(alice: Owner, base: Path, job: Path) -> None:
    outside = owned_dir(base / "outside", alice, 0o700)
    owned_link(str(outside), job / "sub", alice)
    with pytest.raises(FilesError, match='"sub": is a symbolic link; it is not followed'):
        run(write_file(alice, job, "sub/x", b"x"))
    assert os.listdir(outside) == []
    # A link as the file itself is replaced, never written through.
    owned_link("/etc/passwd", job / "passwd", alice)
    before = Path("/etc/passwd").read_bytes()
    run(write_file(alice, job, "passwd", b"mine"))
    assert not (job / "passwd").is_symlink()
    assert (job / "passwd").read_bytes() == b"mine"
    assert Path("/etc/passwd").read_bytes() == before


def test_another_users_job_directory_cannot_be_written(bob: Owner, job: Path) -> None:
    with pytest.raises(FilesError, match="Permission denied"):
        run(write_file(bob, job, "x", b"x"))


# -- unpack -------------------------------------------------------------------------------------

FILE = None


@pytest.mark.parametrize(
    ("archive", "fmt", "message"),
    [
        (
            tar_bytes([("ok.txt", FILE, b"ok"), ("../escape", FILE, b"x")]),
            "tar",
            'input archive entry "../escape": a path that leaves the job directory is refused',
        ),
        (
            tar_bytes([("ok.txt", FILE, b"ok"), ("/etc/x", FILE, b"x")]),
            "tar",
            'input archive entry "/etc/x": an absolute path is refused',
        ),
        (
            tar_bytes([("data/", tarfile.DIRTYPE, b""), ("data/etc", tarfile.SYMTYPE, b"/etc")]),
            "tar",
            'input archive entry "data/etc": a link is refused',
        ),
        (
            tar_bytes([("a", FILE, b"a"), ("b", tarfile.LNKTYPE, b"a")]),
            "tar",
            'input archive entry "b": a link is refused',
        ),
        (
            tar_bytes([("pipe", tarfile.FIFOTYPE, b"")], "bz2"),
            "tar",
            'input archive entry "pipe": a device or FIFO is refused',
        ),
        (
            tar_bytes([(f"f{i}", FILE, b"") for i in range(6)], "xz"),
            "tar",
            "the input archive has more than 5 entries",
        ),
        (
            tar_bytes([("big", FILE, b"z" * 5000)]),
            "tar",
            'input archive entry "big": the archive holds more than the 4096 bytes allowed',
        ),
        (
            zip_bytes([("ok.txt", b"ok", 0o100644), ("../escape", b"x", 0o100644)]),
            "zip",
            'input archive entry "../escape": a path that leaves the job directory is refused',
        ),
        (
            zip_bytes([("/etc/x", b"x", 0o100644)]),
            "zip",
            'input archive entry "/etc/x": an absolute path is refused',
        ),
        (
            zip_bytes([("ok.txt", b"ok", 0o100644), ("etc", b"/etc", 0o120777)]),
            "zip",
            'input archive entry "etc": a link is refused',
        ),
        (
            zip_bytes([(f"f{i}", b"", 0o100644) for i in range(6)]),
            "zip",
            "the input archive has more than 5 entries",
        ),
        (
            zip_bytes([("ok.txt", b"ok", 0o100644), ("bomb", b"\0" * (3 << 20), 0o100644)]),
            "zip",
            'input archive entry "bomb": expands [0-9]+ times .* refused as a possible zip bomb',
        ),
        (b"this is no archive", "tar", "the input archive is not a readable tar archive"),
        (b"this is no archive", "zip", "the input archive is not a readable zip archive"),
    ],
    ids=[
        "tar-dotdot",
        "tar-absolute",
        "tar-symlink",
        "tar-hardlink",
        "tar-fifo",
        "tar-entries",
        "tar-bytes",
        "zip-dotdot",
        "zip-absolute",
        "zip-symlink",
        "zip-entries",
        "zip-bomb",
        "tar-garbage",
        "zip-garbage",
    ],
)
def test_bad_archives_are_refused_and_leave_nothing(
    alice: Owner, job: Path, archive: bytes, fmt: str, message: str
) -> None:
    limits = UnpackLimits(max_entries=5, max_bytes=4096 if "big" in message else 10 << 20)
    with pytest.raises(FilesError, match=message):
        run(unpack(alice, job, "data", fmt, archive, limits=limits))  # type: ignore[arg-type]
    assert listing(job) in ([], ["data"])  # the destination directory at most, empty
    assert not Path("/etc/x").exists()


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_a_good_tar_is_unpacked_as_the_user(alice: Owner, job: Path, compression: str) -> None:
    archive = tar_bytes(
        [
            ("./", tarfile.DIRTYPE, b""),
            ("./pkg/", tarfile.DIRTYPE, b""),
            ("./pkg/run.sh", FILE, b"#!/bin/sh\n"),
            ("./pkg/sub/data.txt", FILE, b"data"),
        ],
        compression,
    )
    assert run(unpack(alice, job, "in", "tar", archive)) == 3
    assert listing(job) == ["in", "in/pkg", "in/pkg/run.sh", "in/pkg/sub", "in/pkg/sub/data.txt"]
    assert (job / "in/pkg/sub/data.txt").read_bytes() == b"data"
    for path in job.rglob("*"):
        assert os.stat(path).st_uid == alice.uid
    assert os.stat(job / "in/pkg/run.sh").st_mode & 0o100


def test_a_good_zip_from_a_kept_file_is_unpacked_and_merged(alice: Owner, base: Path, job: Path) -> None:
    run(write_file(alice, job, "data/old.txt", b"old"))
    run(write_file(alice, job, "data/same.txt", b"before"))
    kept = base / "upload.zip"
    kept.write_bytes(
        zip_bytes(
            [
                ("data/", b"", 0o40755),
                ("data/same.txt", b"after", 0o100644),
                ("data/new.txt", b"new", 0o100600),
            ]
        )
    )
    kept.chmod(0o600)
    assert run(unpack(alice, job, ".", "zip", kept)) == 3
    assert listing(job) == ["data", "data/new.txt", "data/old.txt", "data/same.txt"]
    assert (job / "data/same.txt").read_bytes() == b"after"
    assert os.stat(job / "data/new.txt").st_uid == alice.uid


def test_an_archive_clashing_with_the_job_directory_changes_nothing(alice: Owner, job: Path) -> None:
    run(write_file(alice, job, "data", b"a file"))
    archive = tar_bytes([("first.txt", FILE, b"1"), ("data/x", FILE, b"x")])
    with pytest.raises(
        FilesError, match='"data": the archive has a directory there, the job directory a file'
    ):
        run(unpack(alice, job, ".", "tar", archive))
    assert listing(job) == ["data"]


def test_unpacking_never_goes_through_a_link(alice: Owner, base: Path, job: Path) -> None:
    outside = owned_dir(base / "outside", alice, 0o700)
    owned_link(str(outside), job / "data", alice)
    with pytest.raises(FilesError, match="symbolic link"):
        run(unpack(alice, job, "data", "tar", tar_bytes([("x", FILE, b"x")])))
    with pytest.raises(
        FilesError, match='"data": the archive has a directory there, the job directory a symbolic link'
    ):
        run(unpack(alice, job, ".", "tar", tar_bytes([("data/x", FILE, b"x")])))
    assert os.listdir(outside) == []


# -- collect ------------------------------------------------------------------------------------


def test_collect_hashes_regular_files_and_skips_links(alice: Owner, base: Path, job: Path) -> None:
    for rel, data in [
        ("results/a.txt", b"a"),
        ("results/sub/b.txt", b"bb"),
        ("results/.hidden", b"h"),
        ("run.log", b"log"),
        ("notes.txt", b"n"),
    ]:
        run(write_file(alice, job, rel, data))
    secret = base / "outside.txt"
    secret.write_text("not the job's")
    secret.chmod(0o644)
    owned_link("/etc/passwd", job / "results/passwd", alice)
    owned_link("../../outside.txt", job / "results/outside.txt", alice)
    owned_link(str(secret), job / "outside.log", alice)
    owned_link("/etc", job / "results/etc", alice)
    found = run(collect(alice, job, ["results/**", "*.log", "**/passwd", "results/etc/*"]))
    assert found == [
        CollectedFile("results/a.txt", 1, hashlib.sha256(b"a").hexdigest()),
        CollectedFile("results/sub/b.txt", 2, hashlib.sha256(b"bb").hexdigest()),
        CollectedFile("run.log", 3, hashlib.sha256(b"log").hexdigest()),
    ]
    assert run(collect(alice, job, [".", "results", "nothing/**"])) == []


def test_collect_limits(alice: Owner, job: Path) -> None:
    for i in range(3):
        run(write_file(alice, job, f"out/{i}", b"12345"))
    with pytest.raises(FilesError, match="more than 2 files match the outputs"):
        run(collect(alice, job, ["out/*"], max_files=2))
    with pytest.raises(FilesError, match="the outputs hold more than the 12 bytes allowed"):
        run(collect(alice, job, ["out/*"], max_bytes=12))


def test_collect_of_another_users_job_is_refused(bob: Owner, job: Path) -> None:
    with pytest.raises(FilesError, match="Permission denied"):
        run(collect(bob, job, ["**"]))


# -- copy_in and copy_out -----------------------------------------------------------------------


def test_copy_in_reads_as_the_user(alice: Owner, base: Path, job: Path) -> None:
    secret = base / "root-only"
    secret.write_text("root's")
    secret.chmod(0o600)
    with pytest.raises(FilesError, match=f"{secret}: Permission denied"):
        run(copy_in(alice, str(secret), job, "in"))
    assert not (job / "in" / "root-only").exists()
    readable = base / "shared.txt"
    readable.write_text("shared")
    readable.chmod(0o644)
    run(copy_in(alice, str(readable), job, "in"))
    run(copy_in(alice, str(readable), job, "in", "renamed.txt"))
    for name in ("shared.txt", "renamed.txt"):
        assert (job / "in" / name).read_text() == "shared"
        assert os.stat(job / "in" / name).st_uid == alice.uid


def test_copy_in_of_a_tree_copies_links_as_links(alice: Owner, base: Path, job: Path) -> None:
    tree = owned_dir(base / "inputs", alice)
    owned_dir(tree / "sub", alice)
    (tree / "sub/x.txt").write_text("x")
    os.chown(tree / "sub/x.txt", alice.uid, alice.gid)
    owned_link("/etc/shadow", tree / "shadow", alice)
    os.mkfifo(tree / "fifo")
    run(copy_in(alice, str(tree), job, ".", "inputs"))
    assert listing(job) == ["inputs", "inputs/shadow", "inputs/sub", "inputs/sub/x.txt"]
    assert os.readlink(job / "inputs/shadow") == "/etc/shadow"
    assert os.lstat(job / "inputs/shadow").st_uid == alice.uid
    assert os.stat(job / "inputs/sub/x.txt").st_uid == alice.uid
    # Again: what is there is replaced.
    (tree / "sub/x.txt").write_text("x2")
    run(copy_in(alice, str(tree), job, ".", "inputs"))
    assert (job / "inputs/sub/x.txt").read_text() == "x2"


def test_copy_in_of_an_unreadable_file_in_a_tree_leaves_nothing(alice: Owner, base: Path, job: Path) -> None:
    tree = owned_dir(base / "inputs", alice)
    (tree / "a.txt").write_text("a")
    (tree / "z-root.txt").write_text("root's")
    (tree / "z-root.txt").chmod(0o600)
    with pytest.raises(FilesError, match=r"z-root\.txt: Permission denied"):
        run(copy_in(alice, str(tree), job, "."))
    assert listing(job) == []


def test_copy_in_does_not_follow_another_users_link(alice: Owner, bob: Owner, base: Path, job: Path) -> None:
    shared = base / "shared.txt"
    shared.write_text("s")
    shared.chmod(0o644)
    owned_link(str(shared), base / "bobs-link", bob)
    with pytest.raises(FilesError, match="symbolic link"):
        run(copy_in(alice, str(base / "bobs-link"), job, "."))
    owned_link(str(shared), base / "alices-link", alice)
    run(copy_in(alice, str(base / "alices-link"), job, "."))
    assert (job / "alices-link").read_text() == "s"


def test_copy_out_writes_results_as_the_user(alice: Owner, base: Path, job: Path) -> None:
    run(write_file(alice, job, "bar/output.txt", b"slurm\n"))
    owned_link("/etc/passwd", job / "bar/passwd", alice)
    home = owned_dir(base / "home", alice)
    with pytest.raises(FileMissing, match="outputs: no such directory"):
        run(copy_out(alice, job, "bar", str(home / "outputs/bar"), create=False))
    run(copy_out(alice, job, "bar", str(home / "outputs/bar"), create=True))
    assert listing(home) == ["outputs", "outputs/bar", "outputs/bar/output.txt", "outputs/bar/passwd"]
    assert (home / "outputs/bar/output.txt").read_bytes() == b"slurm\n"
    assert os.readlink(home / "outputs/bar/passwd") == "/etc/passwd"
    for path in home.rglob("*"):
        assert os.lstat(path).st_uid == alice.uid
    run(copy_out(alice, job, "bar/output.txt", str(home / "single.txt"), create=False))
    assert (home / "single.txt").read_bytes() == b"slurm\n"


def test_copy_out_cannot_write_where_the_user_may_not(alice: Owner, base: Path, job: Path) -> None:
    run(write_file(alice, job, "bar/output.txt", b"x"))
    with pytest.raises(FilesError, match="Permission denied"):
        run(copy_out(alice, job, "bar", str(base / "bar"), create=False))
    assert not (base / "bar").exists()


def test_copy_out_does_not_follow_a_link_out_of_the_job(alice: Owner, base: Path, job: Path) -> None:
    owned_link("/etc", job / "bar", alice)
    home = owned_dir(base / "home", alice)
    with pytest.raises(FilesError, match='"bar": is a symbolic link; it is not followed'):
        run(copy_out(alice, job, "bar", str(home / "bar"), create=False))
    with pytest.raises(FilesError, match="leaves the job directory"):
        run(copy_out(alice, job, "../../", str(home / "x"), create=False))
    assert listing(home) == []


# -- read_stream --------------------------------------------------------------------------------


async def _read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_read_stream_from_an_offset(alice: Owner, job: Path) -> None:
    data = os.urandom(300_000)
    run(write_file(alice, job, "out.log", data))
    assert run(_read_all(read_stream(alice, job, "out.log"))) == data
    assert run(_read_all(read_stream(alice, job, "out.log", offset=123_456, chunk=1000))) == data[123_456:]
    assert run(_read_all(read_stream(alice, job, "out.log", offset=10**9))) == b""


def test_read_stream_follows_a_growing_file_until_told_to_stop(alice: Owner, job: Path) -> None:
    run(write_file(alice, job, "slurm.out", b"start\n"))
    path = job / "slurm.out"

    async def scenario() -> bytes:
        done = asyncio.Event()

        async def writer() -> None:
            for i in range(3):
                await asyncio.sleep(0.3)
                with path.open("ab") as f:
                    f.write(f"line {i}\n".encode())
            done.set()

        task = asyncio.ensure_future(writer())
        got = await _read_all(read_stream(alice, job, "slurm.out", follow=lambda: not done.is_set()))
        await task
        return got

    assert run(scenario()) == b"start\nline 0\nline 1\nline 2\n"


def test_closing_a_stream_early_stops_its_helper(alice: Owner, job: Path) -> None:
    run(write_file(alice, job, "slurm.out", b"x" * 100))

    async def scenario() -> None:
        stream = read_stream(alice, job, "slurm.out", follow=lambda: True, chunk=10)
        assert await anext(stream) == b"x" * 10
        assert helpers()
        await stream.aclose()  # type: ignore[attr-defined]

    run(scenario())
    assert helpers() == []


def test_reading_a_missing_file_or_a_link(alice: Owner, job: Path) -> None:
    with pytest.raises(FileMissing, match=r'"nope\.log": no such file in the job directory'):
        run(_read_all(read_stream(alice, job, "nope.log")))
    with pytest.raises(FileMissing, match=r'"no/such/dir\.log": no such file'):
        run(_read_all(read_stream(alice, job, "no/such/dir.log")))
    owned_link("/etc/passwd", job / "passwd", alice)
    with pytest.raises(FilesError, match='"passwd": is a symbolic link; it is not followed'):
        run(_read_all(read_stream(alice, job, "passwd")))
    assert helpers() == []


# -- remove_job_dir -----------------------------------------------------------------------------


def test_removal_follows_no_link_and_copes_with_locked_directories(
    alice: Owner, base: Path, job: Path
) -> None:
    precious = base / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    owned_link(str(precious), job / "link", alice)
    run(write_file(alice, job, "locked/inner/file", b"x"))
    (job / "locked/inner").chmod(0o500)
    (job / "locked").chmod(0o000)
    run(remove_job_dir(alice, job))
    assert not job.exists()
    assert (precious / "keep").read_text() == "keep"
    run(remove_job_dir(alice, job))  # gone already: fine
    assert (base / "jobs" / str(alice.uid)).is_dir()


# -- without root -------------------------------------------------------------------------------

AS_ITSELF = """
import asyncio, sys
from pathlib import Path
from slurmlink.bridge.files import FilesError, collect, make_job_dir, write_file
from slurmlink.bridge.owner import Owner

me, other, root = Owner.of_login(sys.argv[1]), Owner.of_login(sys.argv[2]), Path(sys.argv[3])

async def main():
    job = await make_job_dir(me, root, "job")
    await write_file(me, job, "x", b"x")
    print([f.path for f in await collect(me, job, ["*"])])
    try:
        await write_file(other, job, "y", b"y")
    except FilesError as exc:
        print(exc)

asyncio.run(main())
"""


@pytest.mark.skipif(
    not (os.access("/usr/bin/python3", os.X_OK) and shutil.which("setpriv")),
    reason="needs a Python every user may run (/usr/bin/python3) and setpriv",
)
def test_without_root_the_helper_acts_as_the_caller_only(alice: Owner, bob: Owner, base: Path) -> None:
    mine = owned_dir(base / "mine", alice)
    src = Path(__file__).resolve().parents[2] / "src"
    argv = ["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}", "--clear-groups"]
    argv += ["/usr/bin/python3", "-c", AS_ITSELF, ALICE, BOB, str(mine / "jobs")]
    result = subprocess.run(
        argv,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['x']",
        f"cannot act as {BOB} (uid {bob.uid}): this process runs as uid {alice.uid} and is not root",
    ]
    job = mine / "jobs" / str(alice.uid) / "job"
    assert os.stat(job / "x").st_uid == alice.uid
