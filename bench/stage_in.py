#!/usr/bin/env python3
"""Benchmark: the data mover's stage-in against ``cp -a`` and ``rsync -a`` of the same data.

Two data sets, made once on the host's file system under ``--dir`` (default /var/tmp): (a) one file of
``--big`` bytes (2 GiB) and (b) ``--files`` (10 000) files of ``--file-size`` (64 KiB) in 100-file
directories. Each is copied onto a fresh XFS on a loop file (like a burst buffer; the loop file lives on
the same disk as the source) by:

* the mover — ``slurmlink.mover.run_copy`` as an unprivileged uid (``--uid``, default 64123: the worker
  process drops to it), ``auto`` mode, checksums verified (xxh3-128 of what was read, compared with a
  re-read of what was written), what a DataMovement runs;
* ``cp -a`` and ``rsync -a`` (what data-acc stages with), run as the same uid with ``setpriv``.

Before every copy the destination file system is made anew (``mkfs.xfs -f``), then ``sync`` and
``echo 3 > /proc/sys/vm/drop_caches``, so each copy reads the source cold. ``--rounds`` rounds run the
three tools in turn (alternating which goes first); the medians are reported with the ratios
mover/cp and mover/rsync. Targets (issue: burst buffers part 2): (a) at least 0.9x cp; (b) at least
1.0x cp and 2x rsync.

Run by hand, as root:  python3 bench/stage_in.py [--rounds 3] [--big 2GiB] [--files 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from slurmlink.mover import CopySpec, run_copy
from slurmlink.resources.sizes import parse_size

MIB = 1 << 20


def log(message: str) -> None:
    print(message, flush=True)


def make_data(root: Path, big: int, files: int, file_size: int, uid: int, gid: int) -> tuple[Path, Path]:
    big_dir, small_dir = root / "big", root / "small"
    if not (big_dir / "data").exists() or (big_dir / "data").stat().st_size != big:
        big_dir.mkdir(parents=True, exist_ok=True)
        with open(big_dir / "data", "wb") as out:
            left = big
            while left > 0:
                chunk = os.urandom(min(left, 64 * MIB))
                out.write(chunk)
                left -= len(chunk)
    marker = small_dir / f".made-{files}-{file_size}"
    if not marker.exists():
        shutil.rmtree(small_dir, ignore_errors=True)
        for i in range(files):
            d = small_dir / "tree" / f"d{i // 100:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:06d}").write_bytes(os.urandom(file_size))
        marker.touch()
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)
    return big_dir / "data", small_dir / "tree"


@contextlib.contextmanager
def xfs_target(work: Path, size: int) -> Iterator[Callable[[], Path]]:
    """A loop-backed XFS; calling the result re-makes it empty, mounted, owned by nobody in particular."""
    image = work / "target.img"
    mount = work / "target"
    mount.mkdir(exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:

        def fresh() -> Path:
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
            subprocess.run(["mkfs.xfs", "-f", "-q", device], check=True)
            subprocess.run(["mount", "-t", "xfs", device, str(mount)], check=True)
            os.chmod(mount, 0o777)
            return mount

        yield fresh
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink(missing_ok=True)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(run: Callable[[], None]) -> float:
    drop_caches()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default="/var/tmp", help="where the source data and the target image live")
    parser.add_argument("--big", default="2GiB")
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--file-size", default="64KiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uid", type=int, default=64123)
    parser.add_argument("--gid", type=int, default=64124)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it makes file systems, drops caches and copies as another uid")
    big, file_size = parse_size(args.big), parse_size(args.file_size)
    base = Path(args.dir) / "slurmlink-bench-stage-in"
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    log(f"data in {base}: one {args.big} file; {args.files} files of {args.file_size}")
    big_file, tree = make_data(base / "data", big, args.files, file_size, args.uid, args.gid)
    as_user = ["setpriv", f"--reuid={args.uid}", f"--regid={args.gid}", "--clear-groups"]
    sets = {"(a) one big file": (big_file, big), "(b) small files": (tree, args.files * file_size)}
    with tempfile.TemporaryDirectory(dir=base) as work, xfs_target(Path(work), 2 * big + (4 << 30)) as fresh:
        os.chmod(work, 0o755)
        for name, (source, size) in sets.items():
            times: dict[str, list[float]] = {"mover": [], "cp -a": [], "rsync -a": []}
            tools: dict[str, Callable[[Path], None]] = {
                "mover": lambda dst, s=source: _mover(s, dst, args),
                "cp -a": lambda dst, s=source: _run([*as_user, "cp", "-a", str(s), str(dst)]),
                "rsync -a": lambda dst, s=source: _run([*as_user, "rsync", "-a", str(s), str(dst)]),
            }
            order = list(tools)
            for round_ in range(args.rounds):
                for tool in order[round_ % 3 :] + order[: round_ % 3]:
                    target = fresh() / "copy"
                    seconds = timed(lambda run=tools[tool], d=target: run(d))
                    times[tool].append(seconds)
                    rate = size / seconds / MIB
                    log(f"{name} round {round_ + 1}: {tool:9s} {seconds:7.2f} s  {rate:8.1f} MiB/s")
            med = {tool: statistics.median(values) for tool, values in times.items()}
            rates = ", ".join(f"{tool} {size / seconds / MIB:.1f}" for tool, seconds in med.items())
            log(
                f"{name}: median MiB/s {rates}; mover/cp {med['cp -a'] / med['mover']:.2f}x, "
                f"mover/rsync {med['rsync -a'] / med['mover']:.2f}x"
            )
    return 0


def _mover(source: Path, destination: Path, args: argparse.Namespace) -> None:
    run_copy(CopySpec(str(source), str(destination), "auto", args.uid, args.gid, workers=args.workers))


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


if __name__ == "__main__":
    sys.exit(main())
