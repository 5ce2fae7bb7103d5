"""Helpers of the file-system driver tests (tests/storage): the job user, leftovers on the host."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

#: The job's ids in these tests: an unprivileged uid/gid that needs no account.
JOB_UID = 64123
JOB_GID = 64124
MIB = 1 << 20


def loop_devices_below(directory: Path) -> dict[str, str]:
    """Loop devices whose backing file lies below ``directory``: {device: backing file}."""
    out = subprocess.run(
        ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    prefix = str(directory).rstrip("/") + "/"
    found = {}
    for entry in json.loads(out or '{"loopdevices": []}').get("loopdevices", []):
        back = (entry.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(prefix):
            found[entry["name"]] = back
    return found


def host_mounts_below(directory: Path) -> list[str]:
    out = subprocess.run(
        ["findmnt", "--json", "--list", "--output", "TARGET"], capture_output=True, text=True, check=True
    ).stdout
    prefix = str(directory).rstrip("/") + "/"
    return [fs["target"] for fs in json.loads(out)["filesystems"] if fs["target"].startswith(prefix)]


def cleanup_below(directory: Path) -> None:
    """Whatever a failed test left below ``directory`` on the host: mounts, then loop devices."""
    for target in reversed(host_mounts_below(directory)):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    for device in loop_devices_below(directory):
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


def as_job_user(argv: list[str], uid: int = JOB_UID, gid: int = JOB_GID) -> list[str]:
    """``argv`` run as the job's unprivileged uid/gid (no supplementary groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def write_file_argv(path: str, mib: int) -> list[str]:
    return ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync", "status=none"]


def world_searchable_dir(prefix: str) -> Path:
    """A new directory the job user can traverse (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path
