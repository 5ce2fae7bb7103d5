#!/usr/bin/env python3
"""Benchmark: stage-in with the data mover against ``cp -a`` and ``rsync -a`` of the same data.

Two data sets on the host's file system: (a) one 2 GiB file, (b) 10 000 files of 64 KiB in 100
directories of 100 files under 10 top directories. Each is copied onto a fresh XFS on a sparse loop
file on the same disk (like a burst buffer): by ``run_copy`` (mode ``auto``, checksums verified,
8 workers, files written in place as a job's ``#DW copy_in`` into its own buffer does; ``--atomic``
for the temporary name and rename per file of other copies), by ``cp -a`` and by ``rsync -a``, all
three as an unprivileged user (``setpriv`` for the two commands). Before every run the destination
is removed, then ``sync`` and ``echo 3 > /proc/sys/vm/drop_caches``, so every copy reads its source
from the disk. Runs alternate (mover, cp, rsync, mover, ...) ``--rounds`` times; medians are
reported, with the ratios mover/cp and mover/rsync. Times end when the copy returns (no ``sync``
after: none of the three flushes its writes).

Run by hand, as root:

  python3 bench/stage_in.py [--rounds 3] [--only big|small] [--atomic] [--keep]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slurmlink.mover import CopySpec, run_copy

USER = "slurmlink-bench"
MIB = 1 << 20


def bench_user() -> tuple[int, int]:
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True
        )
        account = pwd.getpwnam(USER)
    return account.pw_uid, account.pw_gid


def make_big(root: Path, size: int) -> int:
    """One file of ``size`` bytes (random 64 MiB blocks, each different)."""
    root.mkdir()
    with (root / "big.dat").open("wb") as f:
        for _ in range(size // (64 * MIB)):
            f.write(os.urandom(64 * MIB))
    return size


def make_small(root: Path, tops: int, dirs: int, files: int, size: int) -> int:
    """``tops`` x ``dirs`` directories of ``files`` files of ``size`` bytes each."""
    pool = os.urandom(size * 64)
    n = 0
    for t in range(tops):
        for d in range(dirs):
            directory = root / f"t{t:02d}" / f"d{d:03d}"
            directory.mkdir(parents=True)
            for i in range(files):
                start = (n * 4099) % (len(pool) - size)
                (directory / f"f{i:04d}.dat").write_bytes(pool[start : start + size])
                n += 1
    return n * size


def chown_tree(root: Path, uid: int, gid: int) -> None:
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(root)], check=True)


def cold(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def as_user(uid: int, gid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["big", "small"])
    parser.add_argument("--big-mib", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--atomic",
        action="store_true",
        help="the mover writes each file under a temporary name renamed once complete (copies out, "
        "into persistent buffers), not in place (copies into a job's own buffer)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the work directory (prints it)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (loop devices, mounts, drop_caches)")
    uid, gid = bench_user()
    work = Path(tempfile.mkdtemp(prefix="slurmlink-stage-in-", dir="/var/tmp"))
    work.chmod(0o755)
    bb = work / "bb"
    bb.mkdir()
    image = work / "bb.img"
    device = ""
    try:
        with image.open("wb") as f:
            f.truncate(8 << 30)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["mkfs.xfs", "-q", device], check=True)
        subprocess.run(["mount", device, str(bb)], check=True)
        os.chown(bb, uid, gid)

        sets: dict[str, tuple[Path, int, int]] = {}
        if args.only in (None, "big"):
            src = work / "src-big"
            sets["big"] = (src, make_big(src, args.big_mib * MIB), 1)
        if args.only in (None, "small"):
            src = work / "src-small"
            sets["small"] = (src, make_small(src, 10, 10, 100, 64 << 10), 10_000)
        for src, _, _ in sets.values():
            chown_tree(src, uid, gid)
        load = os.getloadavg()[0]
        print(f"load average before: {load:.2f}; source {work} (host fs), destination XFS on {device}")
        how = "through temporary names (--atomic)" if args.atomic else "in place"
        print(f"the mover writes files {how}")

        def mover(src: Path, dest: Path) -> None:
            copy = CopySpec(
                str(src), str(dest), "auto", uid, gid, workers=args.workers, in_place=not args.atomic
            )
            run_copy(copy)

        def cp(src: Path, dest: Path) -> None:
            subprocess.run(as_user(uid, gid, ["cp", "-a", str(src), str(dest)]), check=True)

        def rsync(src: Path, dest: Path) -> None:
            subprocess.run(as_user(uid, gid, ["rsync", "-a", f"{src}/", f"{dest}/"]), check=True)

        methods: dict[str, Callable[[Path, Path], None]] = {"mover": mover, "cp -a": cp, "rsync -a": rsync}
        for name, (src, size, count) in sets.items():
            times: dict[str, list[float]] = {m: [] for m in methods}
            for round_ in range(args.rounds):
                for method, copy in methods.items():
                    dest = bb / "out"
                    cold(dest)
                    t0 = time.perf_counter()
                    copy(src, dest)
                    elapsed = time.perf_counter() - t0
                    times[method].append(elapsed)
                    rate_ = size / elapsed / 1e6
                    print(f"  {name} round {round_ + 1} {method:8s} {elapsed:7.2f} s {rate_:8.1f} MB/s")
            med = {m: statistics.median(t) for m, t in times.items()}
            rate = {m: size / t / 1e6 for m, t in med.items()}
            print(f"{name}: {count} file(s), {size / MIB:.0f} MiB, medians of {args.rounds}:")
            for method in methods:
                print(f"  {method:8s} {med[method]:7.2f} s {rate[method]:8.1f} MB/s")
            print(
                f"  mover/cp -a {rate['mover'] / rate['cp -a']:.2f}x   "
                f"mover/rsync -a {rate['mover'] / rate['rsync -a']:.2f}x"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        subprocess.run(["umount", str(bb)], check=False)
        if device:
            subprocess.run(["losetup", "--detach", device], check=False)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
