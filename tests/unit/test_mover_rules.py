"""The mover's pure rules: list files, where each mode puts things, progress as status, the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmlink.mover import CopySpec, MoveError, MoveProgress
from slurmlink.mover.copier import BATCH, SPLIT_AT
from slurmlink.mover.journal import Journal, load
from slurmlink.mover.listfile import parse_list
from slurmlink.mover.plan import FileItem
from slurmlink.mover.shares import FILE_COST, split
from slurmlink.mover.targets import Kind, KindOf, Target, list_targets, resolve


def fs(entries: dict[str, Kind]) -> KindOf:
    return lambda path: entries.get(path)


def test_list_skips_blanks_and_comments_and_keeps_pairs_in_order() -> None:
    text = "# inputs\n\n/a/x  /b/x\n   \n/a/y\t/b/dir/\n"
    assert parse_list(text, "/l") == [("/a/x", "/b/x"), ("/a/y", "/b/dir/")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/a/x\n", "/l line 1: expected 'SOURCE DESTINATION'"),
        ("/a/x /b/x /c\n", "/l line 1: expected"),
        ("# c\na/x /b/x\n", "/l line 2: 'a/x' is not an absolute path"),
        ("/a/x b\n", "'b' is not an absolute path"),
        ("# only comments\n", "names no files"),
    ],
)
def test_list_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(MoveError, match=message.replace("(", r"\(")):
        parse_list(text, "/l")


def test_list_paths_relative_to_the_list_and_the_destination() -> None:
    text = "in/a  out/a\n/abs/b  b\n"
    assert parse_list(text, "/home/u/files.list", destination="/buf/root", buffer_side="destination") == [
        ("/home/u/in/a", "/buf/root/out/a"),
        ("/abs/b", "/buf/root/b"),
    ]


@pytest.mark.parametrize(
    ("text", "side", "message"),
    [
        ("/a/x /etc/passwd\n", "destination", "'/etc/passwd' must be relative to the burst buffer"),
        ("/a/x out\n", "source", "'/a/x' must be relative to the burst buffer"),
        ("a/../../x y\n", None, "contains '..'"),
    ],
)
def test_list_lines_stay_inside_the_buffer(text: str, side: str | None, message: str) -> None:
    with pytest.raises(MoveError, match=message):
        parse_list(text, "/l", destination="/buf", buffer_side=side)


def test_file_mode_copies_to_the_name_or_into_a_directory() -> None:
    look = fs({"/s/f": "file", "/d": "directory", "/s/l": "link"})
    assert resolve("file", "/s/f", "/d", look) == [Target("/s/f", "/d/f", "file")]
    assert resolve("file", "/s/f", "/new/", look) == [Target("/s/f", "/new/f", "file")]
    assert resolve("file", "/s/f", "/new/g", look) == [Target("/s/f", "/new/g", "file")]
    assert resolve("file", "/s/l", "/d", look) == [Target("/s/l", "/d/l", "file")]


def test_file_mode_refuses_directories_missing_sources_and_specials() -> None:
    look = fs({"/s": "directory", "/s/fifo": "special"})
    with pytest.raises(MoveError, match="/s: is a directory"):
        resolve("file", "/s", "/d", look)
    with pytest.raises(MoveError, match="/s/none: No such file or directory"):
        resolve("file", "/s/none", "/d", look)
    with pytest.raises(MoveError, match="fifo"):
        resolve("file", "/s/fifo", "/d", look)


def test_directory_mode_copies_contents_into_the_destination() -> None:
    look = fs({"/s": "directory", "/d": "directory", "/s/f": "file"})
    assert resolve("directory", "/s/", "/d", look) == [Target("/s", "/d", "tree")]
    assert resolve("directory", "/s", "/new", look) == [Target("/s", "/new", "tree")]
    with pytest.raises(MoveError, match="/s/f: is not a directory"):
        resolve("directory", "/s/f", "/d", look)


def test_auto_mode_is_cp_a() -> None:
    look = fs({"/s": "directory", "/d": "directory", "/s/f": "file"})
    assert resolve("auto", "/s", "/d", look) == [Target("/s", "/d/s", "tree")]
    assert resolve("auto", "/s", "/new", look) == [Target("/s", "/new", "tree")]
    assert resolve("auto", "/s/f", "/d", look) == [Target("/s/f", "/d/f", "file")]
    assert resolve("auto", "/s/f", "/g", look) == [Target("/s/f", "/g", "file")]


def test_a_destination_seen_through_a_trusted_link_counts_as_a_directory() -> None:
    look = fs({"/s/f": "file", "/s": "directory", "/d": "link"})
    through = fs({"/d": "directory"})
    assert resolve("file", "/s/f", "/d", look) == [Target("/s/f", "/d", "file")]
    assert resolve("file", "/s/f", "/d", look, through) == [Target("/s/f", "/d/f", "file")]
    assert resolve("auto", "/s", "/d", look, through) == [Target("/s", "/d/s", "tree")]


def test_list_pairs_resolve_as_files() -> None:
    look = fs({"/a": "file", "/b": "file", "/d": "directory"})
    assert list_targets([("/a", "/d"), ("/b", "/x/y")], look) == [
        Target("/a", "/d/a", "file"),
        Target("/b", "/x/y", "file"),
    ]


@pytest.mark.parametrize(
    ("mode", "source", "destination", "message"),
    [
        ("copy", "/s", "/d", "unknown copy mode 'copy'"),
        ("auto", "s", "/d", "the source 's' is not an absolute path"),
        ("auto", "/s", "d", "the destination 'd' is not an absolute path"),
        ("auto", "/s/../etc", "/d", "contains '..'"),
    ],
)
def test_bad_requests_are_refused(mode: str, source: str, destination: str, message: str) -> None:
    with pytest.raises(MoveError, match=message):
        resolve(mode, source, destination, fs({"/s": "directory"}))


def test_progress_status_uses_the_api_names() -> None:
    p = MoveProgress(files_total=3, files_done=2, files_skipped=1, directories=4, links=5)
    p.bytes_total, p.bytes_done, p.checksums_verified, p.seconds, p.rate = 30, 20, 2, 1.23456, 16.26
    assert p.to_status() == {
        "filesTotal": 3,
        "filesDone": 2,
        "filesSkipped": 1,
        "directories": 4,
        "links": 5,
        "bytesTotal": 30,
        "bytesDone": 20,
        "checksumsVerified": 2,
        "seconds": 1.235,
        "rate": 16.3,
        "specialsSkipped": 0,
    }


def test_spec_round_trips_through_json() -> None:
    spec = CopySpec("/s", "/d", "auto", 1000, 1000, (5, 6), workers=2, verify=False)
    assert CopySpec.from_json(spec.to_json()) == spec


def test_journal_ignores_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    spec = CopySpec("/s", "/d", "auto", 1000, 1000)
    path = tmp_path / "j"
    journal = Journal(path)
    journal.write({"t": "targets", "spec": ["/s", "/d", "auto"], "targets": [["/s", "/d/s", "tree"]]})
    journal.write({"t": "v", "dst": "/d/s/a", "size": 1})
    journal.close()
    with path.open("a") as f:
        f.write('{"t": "v", "dst": "/d/s/b", "si')  # killed mid-line
    journal = Journal(path)
    journal.write({"t": "v", "dst": "/d/s/c", "size": 3})
    journal.close()
    targets, done = load(path, spec)
    assert targets == [["/s", "/d/s", "tree"]]
    assert [r["dst"] for r in done] == ["/d/s/a", "/d/s/c"]
    assert load(path, CopySpec("/other", "/d", "auto", 1000, 1000))[0] is None
    assert load(tmp_path / "missing", spec) == (None, [])


# ---- shares of a split copy -----------------------------------------------------------------------------


def _file(rel_dir: str, name: str, size: int) -> FileItem:
    return FileItem(0, rel_dir, name, name, size, 0o644, 0, 0)


def test_a_split_copies_every_file_once_large_ones_in_the_first_process_in_whole_batches() -> None:
    # 10 directories of 100 small files (4 batches each: 32, 32, 32, 4) and two large files.
    files = [_file(f"d{d}", f"f{f:03}", 64 << 10) for d in range(10) for f in range(100)]
    large = [_file("", "big1", SPLIT_AT), _file("", "big2", 2 * SPLIT_AT)]
    parts = split(files + large, 3)
    assert sorted((f.rel_dir, f.src_name) for part in parts for f in part) == sorted(
        (f.rel_dir, f.src_name) for f in files + large
    )
    assert all(f in parts[0] for f in large)
    for part in parts:  # a batch is never torn between processes
        names = {(f.rel_dir, f.src_name) for f in part}
        for d in range(10):
            for start in range(0, 100, BATCH):
                batch = {(f"d{d}", f"f{i:03}") for i in range(start, min(start + BATCH, 100))}
                assert batch <= names or not batch & names
    # The large files' 192 MiB are more than a third of the work: the first process copies only them.
    assert parts[0] == large
    work = [sum(FILE_COST + f.size for f in part) for part in split(files, 3)]
    assert max(work) - min(work) <= BATCH * (FILE_COST + (64 << 10))  # within one batch of each other


def test_one_share_is_the_whole_plan() -> None:
    files = [_file("d", f"f{i}", 10) for i in range(40)]
    assert split(files, 1) == [files]
