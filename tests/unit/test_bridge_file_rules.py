"""The job bridge's file rules without a helper process: paths inside a job directory, archive
entries, output globs (against :func:`glob.glob` on a real tree), owners, and how a helper's exit
becomes an error."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import stat
from pathlib import Path

import pytest

from slurmlink.bridge import files
from slurmlink.bridge.files import FileMissing, FilesError, UnpackLimits
from slurmlink.bridge.owner import Owner, OwnerError
from slurmlink.bridge.paths import (
    REFUSED,
    Globs,
    check_name,
    check_ratio,
    entry_parts,
    relative_parts,
    zip_entry_kind,
)
from slurmlink.identity import parse_identity, supplementary_groups

NOBODY = Owner("nobody", 65534, 65534, ())


# -- paths --------------------------------------------------------------------------------------


def test_relative_parts_drop_dots_and_empty_components() -> None:
    assert relative_parts("a/./b//c/") == ["a", "b", "c"]
    assert relative_parts(".", allow_empty=True) == []


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "must be relative to the job directory, not absolute"),
        ("../x", "a path that leaves the job directory is refused"),
        ("a/../../x", "a path that leaves the job directory is refused"),
        ("a/..", "a path that leaves the job directory is refused"),
        ("a\x00b", "must not contain a NUL character"),
        ("", "must name something inside the job directory"),
        ("./", "must name something inside the job directory"),
    ],
)
def test_relative_parts_refuse_paths_leaving_the_job_directory(path: str, why: str) -> None:
    with pytest.raises(FilesError, match=why):
        relative_parts(path, "file")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00", "x" * 256])
def test_check_name_wants_one_component(name: str) -> None:
    with pytest.raises(FilesError):
        check_name(name)


def test_check_name_accepts_a_plain_name() -> None:
    assert check_name("job-1.out") == "job-1.out"


# -- archive entries ----------------------------------------------------------------------------


def test_entry_parts_of_good_names() -> None:
    assert entry_parts("./data/x.txt") == ["data", "x.txt"]
    assert entry_parts("data/") == ["data"]
    assert entry_parts("./") == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../escape", 'input archive entry "../escape": a path that leaves the job directory is refused'),
        ("a/../../b", 'input archive entry "a/../../b": a path that leaves the job directory is refused'),
        ("/etc/x", 'input archive entry "/etc/x": an absolute path is refused'),
    ],
)
def test_entry_parts_refuse_names_leaving_the_directory(name: str, message: str) -> None:
    with pytest.raises(FilesError) as caught:
        entry_parts(name)
    assert str(caught.value) == message


def test_entry_names_are_quoted_with_control_characters_escaped() -> None:
    with pytest.raises(FilesError, match=r'"\.\./\\n"'):
        entry_parts("../\n")


def test_zip_entry_kinds_from_unix_modes() -> None:
    assert zip_entry_kind("a.txt", (stat.S_IFREG | 0o644) << 16) == "file"
    assert zip_entry_kind("d/", (stat.S_IFDIR | 0o755) << 16) == "directory"
    assert zip_entry_kind("d/", 0) == "directory"  # no Unix mode recorded: the trailing slash says it
    assert zip_entry_kind("a.txt", 0) == "file"
    with pytest.raises(FilesError, match='"ln": a link is refused'):
        zip_entry_kind("ln", (stat.S_IFLNK | 0o777) << 16)
    with pytest.raises(FilesError, match='"fifo": a device, FIFO or socket is refused'):
        zip_entry_kind("fifo", (stat.S_IFIFO | 0o644) << 16)


def test_ratio_refuses_only_large_entries_that_inflate_too_much() -> None:
    limits = UnpackLimits(max_ratio=100)
    check_ratio("e", 1 << 20, 1, limits)  # small enough not to matter
    check_ratio("e", 50 << 20, 1 << 20, limits)  # 50:1
    with pytest.raises(FilesError, match=r"expands 1000 times .* refused as a possible zip bomb"):
        check_ratio("e", 1000 << 20, 1 << 20, limits)


def test_unpack_limits_round_trip_as_json() -> None:
    limits = UnpackLimits(max_entries=5, max_bytes=1 << 20, max_ratio=7.5)
    assert UnpackLimits.from_json(json.loads(json.dumps(limits.to_json()))) == limits
    assert UnpackLimits() == UnpackLimits(10_000, 10 << 30, 100.0)


# -- globs --------------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    for rel in [
        "a.log",
        "b.txt",
        ".hidden.log",
        "results/x.txt",
        "results/.dot.txt",
        "results/sub/y.txt",
        "results/sub/deeper/z.dat",
        "results/.git/config",
        "other/results/w.txt",
        "a/b/c",
        "a/x/c",
        "[x]",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)


def _walk_matches(root: Path, patterns: list[str]) -> list[str]:
    globs = Globs(patterns)
    found: list[str] = []

    def visit(directory: Path, prefix: str, states: frozenset[tuple[int, int]]) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            here = globs.step(states, entry.name)
            if not here:
                continue
            path = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False) and globs.alive(here):
                visit(Path(entry.path), path + "/", here)
            elif entry.is_file(follow_symlinks=False) and globs.matched(here):
                found.append(path)

    visit(root, "", globs.start())
    return sorted(found)


@pytest.mark.parametrize(
    "pattern",
    [
        "**",
        "results/**",
        "results",
        "*.log",
        "**/*.txt",
        "results/*",
        "results/.*",
        "results/.git/*",
        "**/results/*.txt",
        "a/*/c",
        "[ab]*",
        "[[]x]",
        "*/**/z.dat",
        "results/**/*",
        "./results/sub/y.txt",
        "results//sub/**",
        "**/**/y.txt",
        ".hidden.log",
        ".*",
    ],
)
def test_globs_match_like_glob_glob(tmp_path: Path, pattern: str) -> None:
    _tree(tmp_path)
    matches = glob.glob(pattern, root_dir=tmp_path, recursive=True)  # "**/**" lists some twice
    expected = sorted({os.path.normpath(p) for p in matches if (tmp_path / p).is_file()})
    assert _walk_matches(tmp_path, [pattern]) == expected


def test_several_globs_are_one_set(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert _walk_matches(tmp_path, ["*.log", "results/sub/**", "*.log"]) == [
        "a.log",
        "results/sub/deeper/z.dat",
        "results/sub/y.txt",
    ]


def test_globs_do_not_descend_where_nothing_can_match() -> None:
    globs = Globs(["results/*.txt"])
    assert not globs.step(globs.start(), "other")
    inside = globs.step(globs.start(), "results")
    assert globs.alive(inside) and not globs.matched(inside)
    assert not globs.alive(globs.step(inside, "x.txt"))


@pytest.mark.parametrize("pattern", ["../*", "/etc/*", "a/../../b"])
def test_globs_leaving_the_job_directory_are_refused(pattern: str) -> None:
    with pytest.raises(FilesError, match="output glob"):
        Globs([pattern])


# -- owners and identities ----------------------------------------------------------------------


def test_root_never_owns_a_job() -> None:
    with pytest.raises(OwnerError, match="jobs never run as root"):
        Owner.of_uid(0)
    with pytest.raises(OwnerError, match="jobs never run as root"):
        Owner.of_login("root")
    with pytest.raises(OwnerError, match="jobs never run as root"):
        Owner("toor", 0, 0, ())


def test_unknown_owners_are_named() -> None:
    with pytest.raises(OwnerError, match="no Unix account has uid 4000000000 on this host"):
        Owner.of_uid(4_000_000_000)
    with pytest.raises(OwnerError, match="no Unix account 'no-such-user-here' on this host"):
        Owner.of_login("no-such-user-here")
    with pytest.raises(OwnerError, match="no Unix account"):
        Owner.of_login("bad\x00name")


def test_owner_of_a_real_account() -> None:
    owner = Owner.of_login("nobody")
    assert (owner.login, owner.uid) == ("nobody", Owner.of_uid(owner.uid).uid)
    assert owner.gid not in owner.groups


def test_identity_options_parse_and_leave_the_rest() -> None:
    assert parse_identity(["--uid", "5", "--gid", "6", "--groups", "7,8", "write"]) == (
        (5, 6, [7, 8]),
        ["write"],
    )
    assert parse_identity(["--uid", "5", "--gid", "6", "--groups", "", "read"]) == ((5, 6, []), ["read"])
    assert parse_identity(["read"]) == (None, ["read"])
    assert parse_identity([]) == (None, [])


def test_supplementary_groups_of_an_unknown_uid_are_none() -> None:
    assert supplementary_groups(4_000_000_000, 4_000_000_000) == ()


# -- the parent side, before and after a helper -------------------------------------------------


def test_helper_refusals_become_errors() -> None:
    line = json.dumps({"error": '"x": no such file in the job directory', "missing": True}).encode()
    with pytest.raises(FileMissing, match='"x": no such file'):
        files._outcome("read", REFUSED, b"noise\n" + line + b"\n")
    line = json.dumps({"error": "refused for a reason", "missing": False}).encode()
    with pytest.raises(FilesError, match=r"^refused for a reason$") as caught:
        files._outcome("write", REFUSED, line)
    assert not isinstance(caught.value, FileMissing)
    files._outcome("write", 0, b"")


def test_helper_crashes_are_reported_with_their_last_words() -> None:
    with pytest.raises(FilesError, match=r"the file helper \(collect\) exited with status 1: Boom"):
        files._outcome("collect", 1, b"Traceback...\nBoom\n")
    with pytest.raises(FilesError, match=r"the file helper \(read\) was killed by SIGKILL"):
        files._outcome("read", -9, b"")


@pytest.mark.parametrize(
    "call",
    [
        lambda: files.write_file(NOBODY, "/j", "../x", b""),
        lambda: files.write_file(NOBODY, "/j", "/etc/x", b""),
        lambda: files.write_file(NOBODY, "/j", "x", b"", mode=0o4755),
        lambda: files.write_file(NOBODY, "/j", "x", b"", sha256="ABC"),
        lambda: files.unpack(NOBODY, "/j", "..", "tar", b""),
        lambda: files.unpack(NOBODY, "/j", ".", "rar", b""),  # type: ignore[arg-type]
        lambda: files.copy_in(NOBODY, "relative/path", "/j", "."),
        lambda: files.copy_in(NOBODY, "/etc/hostname", "/j", ".", "a/b"),
        lambda: files.copy_out(NOBODY, "/j", "../x", "/tmp/x", create=False),
        lambda: files.copy_out(NOBODY, "/j", "x", "relative", create=False),
        lambda: files.make_job_dir(NOBODY, Path("/var/tmp"), "../x"),
        lambda: files.make_job_dir(NOBODY, Path("relative"), "x"),
        lambda: files.collect(NOBODY, "/j", ["results/**", "../*"]),
        lambda: files.read_stream(NOBODY, "/j", "x", offset=-1).__anext__(),
    ],
)
def test_bad_arguments_are_refused_before_any_process_starts(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FilesError):
        asyncio.run(call())


def test_collect_of_no_globs_is_empty() -> None:
    assert asyncio.run(files.collect(NOBODY, "/j", [])) == []
