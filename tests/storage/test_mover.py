"""The data mover (slurmlink.mover) on real files, as a real unprivileged uid: modes of copying,
fidelity, the user's rights, links never followed, checksums, journal and resume, cancel."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurmlink.mover import CopySpec, MoveCancelled, MoveError, read_journal, run_copy
from slurmlink.mover.copier import Copier
from slurmlink.mover.plan import build
from support import trees
from support.storage import JOB_GID, JOB_UID, world_searchable_dir

pytestmark = [pytest.mark.storage, pytest.mark.timeout(120)]


@pytest.fixture()
def area() -> Iterator[Path]:
    path = world_searchable_dir("slurmlink-mover-")
    os.chown(path, JOB_UID, JOB_GID)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spec(source: Path | str, destination: Path | str, mode: str = "auto", **kw: object) -> CopySpec:
    return CopySpec(str(source), str(destination), mode, JOB_UID, JOB_GID, **kw)  # type: ignore[arg-type]


def mine(path: Path) -> Path:
    """``path`` and all below it owned by the job user (a new directory if it does not exist)."""
    path.mkdir(exist_ok=True)
    for p in [path, *path.rglob("*")]:
        os.lchown(p, JOB_UID, JOB_GID)
    return path


def test_auto_copies_like_cp_a_keeping_modes_times_and_links(area: Path) -> None:
    source = area / "tree"
    trees.make_tree(source, JOB_UID, JOB_GID)
    done = run_copy(spec(source, area / "copy"))  # the destination does not exist: it becomes the copy
    assert trees.digest(area / "copy") == trees.digest(source)
    assert (area / "copy" / "etc-link").readlink() == Path("/etc")  # a link, /etc not read
    assert trees.owners(area / "copy") == {JOB_UID}
    assert (done.files_total, done.files_done, done.links, done.checksums_verified) == (4, 4, 2, 4)
    assert (
        done.bytes_done
        == done.bytes_total
        == sum(
            (source / p).stat().st_size
            for p in ("a.txt", "sub/b.bin", "sub/deeper/run.sh", "sub/deeper/private")
        )
    )
    run_copy(spec(source, area / "copy"))  # now it exists: the tree goes inside, as cp -a does
    assert trees.digest(area / "copy" / "tree") == trees.digest(source)
    assert not list(area.rglob("*.slurmlink-part"))


def test_file_directory_and_list_modes(area: Path) -> None:
    source = area / "tree"
    trees.make_tree(source, JOB_UID, JOB_GID)
    out = mine(area / "out")
    run_copy(spec(source / "a.txt", out / "renamed.txt", "file"))
    run_copy(spec(source / "a.txt", f"{out}/", "file"))
    assert (out / "renamed.txt").read_text() == (out / "a.txt").read_text() == "alpha\n"
    run_copy(spec(source / "sub", out / "contents", "directory"))  # the contents, not the directory
    assert trees.digest(out / "contents") == trees.digest(source / "sub")
    listing = area / "files.list"
    listing.write_text(f"# comment\n\n{source}/a.txt listed/a\ntree/sub/b.bin listed/b\n")
    os.chown(listing, JOB_UID, JOB_GID)
    run_copy(spec(listing, out / "from-list", "list", buffer_side="destination"))
    assert (out / "from-list" / "listed" / "a").read_text() == "alpha\n"  # parents made as needed
    assert (out / "from-list" / "listed" / "b").read_bytes() == (source / "sub" / "b.bin").read_bytes()
    with pytest.raises(MoveError, match="is a directory; copy it with type=directory"):
        run_copy(spec(source / "sub", out / "x", "file"))
    with pytest.raises(MoveError, match="is not a directory; copy it with type=file"):
        run_copy(spec(source / "a.txt", out / "x", "directory"))
    listing.write_text(f"{source}/a.txt /etc/escape\n")
    with pytest.raises(MoveError, match="line 1: /etc/escape must be relative to the burst buffer"):
        run_copy(spec(listing, out, "list", buffer_side="destination"))
    listing.write_text("a b c\n")
    with pytest.raises(MoveError, match="line 1: expected 'SOURCE DESTINATION', found 3 word"):
        run_copy(spec(listing, out, "list"))


def test_the_users_rights_not_roots(area: Path) -> None:
    source = mine(area / "in")
    (source / "ok").write_text("ok\n")
    secret = source / "secret"
    secret.write_text("root's\n")
    secret.chmod(0o600)  # owned by root
    with pytest.raises(MoveError) as caught:
        run_copy(spec(source, area / "copy"))
    assert str(caught.value) == f"{secret}: Permission denied"
    closed = area / "roots"
    closed.mkdir(mode=0o755)  # root's: root could write here
    secret.unlink()
    with pytest.raises(MoveError, match=f"{closed}/in: Permission denied"):
        run_copy(spec(source, f"{closed}/"))
    assert list(closed.iterdir()) == []
    with pytest.raises(MoveError, match="copies never run as root"):
        run_copy(CopySpec(str(source), str(area / "x"), "auto", 0, 0))


def test_a_link_planted_in_a_buffer_is_not_followed(area: Path) -> None:
    buffer = mine(area / "buffer")
    elsewhere = mine(area / "elsewhere")
    (buffer / "out").symlink_to(elsewhere)
    os.lchown(buffer / "out", JOB_UID, JOB_GID)
    (area / "f").write_text("x\n")
    os.chown(area / "f", JOB_UID, JOB_GID)
    with pytest.raises(MoveError, match="out exists and is a symbolic link; it is not followed"):
        run_copy(spec(area / "f", f"{buffer}/out/sub/f", "file", buffer_side="destination"))
    # A file copied onto the link replaces the link; what it pointed to is untouched.
    run_copy(spec(area / "f", f"{buffer}/out", "file", buffer_side="destination"))
    assert not (buffer / "out").is_symlink() and (buffer / "out").read_text() == "x\n"
    assert list(elsewhere.iterdir()) == []


def test_a_checksum_mismatch_fails_the_copy(area: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: what is read back differs from what was read (a disk or file-system error)."""
    source = area / "tree"
    trees.make_tree(source, JOB_UID, JOB_GID)
    monkeypatch.setattr(Copier, "_hash_file", lambda self, path: "0" * 32)
    plan = build(spec(source, area / "copy"))
    copier = Copier(
        plan, workers=2, verify=True, skip={}, on_verified=lambda *_: None, stop=threading.Event()
    )
    with pytest.raises(MoveError, match="checksum mismatch after copying"):
        copier.run()


def test_not_enough_space_fails_before_copying(area: Path) -> None:
    source = mine(area / "big")
    with open(source / "sparse", "wb") as f:
        f.truncate(1 << 43)  # 8 TiB, no blocks
    os.chown(source / "sparse", JOB_UID, JOB_GID)
    with pytest.raises(MoveError, match="not enough space: the copy needs 8796093022208 bytes"):
        run_copy(spec(source, area / "copy"))
    assert not (area / "copy").exists() or not any((area / "copy").iterdir())


def test_cancel_stops_a_large_copy_and_a_rerun_resumes(area: Path) -> None:
    source = area / "many"
    trees.fill(source, 3000, 32768)
    mine(source)
    journal = Path(area.parent / f"{area.name}.journal")
    cancel = threading.Event()
    asked: list[float] = []

    def progress(p: object) -> None:
        if getattr(p, "files_done", 0) >= 300 and not cancel.is_set():
            asked.append(time.monotonic())
            cancel.set()

    try:
        with pytest.raises(MoveCancelled):
            run_copy(
                spec(source, area / "copy"), journal=journal, progress=progress, cancel=cancel, interval=0.05
            )
        assert time.monotonic() - asked[0] < 2
        verified, targets = read_journal(journal)
        assert targets == [str(area / "copy")] and 0 < len(verified) < 3000
        done = run_copy(spec(source, area / "copy"), journal=journal)  # the same copy again: resumed
        assert done.files_skipped == len(verified) and done.files_done == 3000 - len(verified)
        assert trees.digest(area / "copy") == trees.digest(source)  # not nested inside itself
        assert not list((area / "copy").rglob("*.slurmlink-part"))
    finally:
        journal.unlink(missing_ok=True)
