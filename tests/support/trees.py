"""Directory trees for copy tests: make one, and describe one (types, modes, times, contents, links).

Also a script, for jobs on compute nodes: ``python3 trees.py digest DIR OUT`` writes what DIR holds to
the JSON file OUT (stdout through ``srun -l`` would split long lines), and ``python3 trees.py fill DIR
N SIZE`` writes N files of SIZE bytes, so the test compares what the job saw with what it put in.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

#: A fixed mtime for one file, to see times carried over (2021-01-01T00:00:00Z).
OLD_MTIME = 1609459200


def make_tree(root: Path, uid: int, gid: int) -> None:
    """A small tree: nested directories, modes, an old mtime, a 1 MiB file, links in and out of it."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(1 << 20))
    script = root / "sub" / "deeper" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    private = root / "sub" / "deeper" / "private"
    private.write_text("mine\n")
    private.chmod(0o600)
    os.utime(private, (OLD_MTIME, OLD_MTIME))
    (root / "link-to-a").symlink_to("a.txt")
    (root / "etc-link").symlink_to("/etc")  # copied as a link: /etc itself is never read
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)
    os.utime(root / "sub" / "deeper", (OLD_MTIME, OLD_MTIME))


def digest(root: Path) -> dict[str, Any]:
    """relative path -> [kind, mode, mtime (s), sha256 or link target] for everything under ``root``."""
    out: dict[str, Any] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = st.st_mode & 0o7777
            if path.is_symlink():
                out[rel] = ["link", None, None, os.readlink(path)]
            elif path.is_dir():
                out[rel] = ["dir", mode, int(st.st_mtime), None]
            else:
                out[rel] = ["file", mode, int(st.st_mtime), hashlib.sha256(path.read_bytes()).hexdigest()]
    return out


def owners(root: Path) -> set[int]:
    """The uids that own anything under ``root``, ``root`` itself included."""
    return {p.lstat().st_uid for p in [root, *root.rglob("*")]}


def fill(root: Path, count: int, size: int) -> None:
    """``count`` files of ``size`` random bytes in 100-file subdirectories of ``root``."""
    for i in range(count):
        directory = root / f"d{i // 100:04d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:06d}").write_bytes(os.urandom(size))


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "digest":
        Path(argv[3]).write_text(json.dumps(digest(Path(argv[2])), sort_keys=True))
        return 0
    if len(argv) == 5 and argv[1] == "fill":
        fill(Path(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    print("usage: trees.py digest DIR OUT | trees.py fill DIR COUNT SIZE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
