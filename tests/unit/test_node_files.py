"""A node's file operations done in the agent's own process give what the programs give.

An agent's runner for its own node (no prefix) does them in-process; a runner into another node's
namespaces runs ``test``, ``mkdir``, ``cat``, ``install``/``dd``/``mv`` there. Each case runs both: the
in-process runner and one that runs the same programs here (through ``env``), on real files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CommandError
from slurmlink.storage.filesystems.runner import NodeRunner

IN_PROCESS = NodeRunner("here")
PROGRAMS = NodeRunner("here", prefix=("env",))


@pytest.fixture(params=[IN_PROCESS, PROGRAMS], ids=["in-process", "programs"])
def runner(request: pytest.FixtureRequest) -> NodeRunner:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_which_runner_works_in_process() -> None:
    assert IN_PROCESS.here and not PROGRAMS.here
    assert not NodeRunner("n", wrap=lambda argv: list(argv)).here


def test_existence_and_directories(runner: NodeRunner, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    assert nodefs.exists(runner, str(tmp_path / "f")) and not nodefs.is_dir(runner, str(tmp_path / "f"))
    assert nodefs.is_dir(runner, str(tmp_path))
    assert not nodefs.exists(runner, str(tmp_path / "missing"))
    assert not nodefs.exists(runner, str(tmp_path / "dangling"))


def test_make_dirs_sets_the_mode_of_the_last_directory_it_creates(runner: NodeRunner, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c"
    nodefs.make_dirs(runner, str(path), mode=0o755)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # not narrowed by the umask
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700  # parents: the umask's
    path.chmod(0o700)
    nodefs.make_dirs(runner, str(path), mode=0o755)  # there already: left as it is
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match="mkdir"):
        nodefs.make_dirs(runner, str(tmp_path / "file"))


def test_text_is_replaced_whole_with_its_mode(runner: NodeRunner, tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    assert nodefs.read_text(runner, str(path)) is None
    nodefs.write_text(runner, str(path), "first\n")
    nodefs.write_text(runner, str(path), "second ünïcode\n", mode=0o644)
    assert nodefs.read_text(runner, str(path)) == "second ünïcode\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temporary file left
    with pytest.raises(CommandError):
        nodefs.write_text(runner, str(tmp_path / "missing-dir" / "f"), "x")


def test_removal_leaves_what_it_must(runner: NodeRunner, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "f").write_text("")
    nodefs.remove_empty_dir(runner, str(full))
    nodefs.remove_empty_dir(runner, str(tmp_path / "missing"))
    assert full.is_dir()
    nodefs.remove_file(runner, str(full / "f"))
    nodefs.remove_file(runner, str(full / "f"))  # gone already: fine
    nodefs.remove_empty_dir(runner, str(full))
    assert not full.exists()
    with pytest.raises(CommandError):
        nodefs.remove_file(runner, str(tmp_path))  # a directory is not a file


def test_real_path_resolves_links_and_refuses_what_is_missing(runner: NodeRunner, tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert nodefs.real_path(runner, str(tmp_path / "link")) == str((tmp_path / "target").resolve())
    with pytest.raises(CommandError, match="realpath"):
        nodefs.real_path(runner, str(tmp_path / "missing"))


@pytest.mark.parametrize("operation", [nodefs.exists, nodefs.is_dir, nodefs.read_text])
def test_in_process_runs_no_program(operation: Callable[[NodeRunner, str], object], tmp_path: Path) -> None:
    class NoPrograms(NodeRunner):
        def run(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise AssertionError(f"ran {args!r}")

    (tmp_path / "f").write_text("x")
    operation(NoPrograms("here"), str(tmp_path / "f"))
