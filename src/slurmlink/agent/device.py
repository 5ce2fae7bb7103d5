"""A storage node's device, made ready as the node's *pool* and measured.

Three kinds, as ``slurmlink agent`` is told:

* ``--directory DIR``: a directory (on any file system) is the pool as it is; its capacity is the
  size of the file system it lives on, unless ``--capacity`` declares another (a ``dir`` pool's
  capacity is kept by accounting, so a test may declare more than the disk holds);
* ``--device PATH``: a block device;
* ``--loop-file FILE --size SIZE``: a sparse file the agent creates (atomically: written beside it,
  then renamed) and attaches with ``losetup``.

A block device or loop device is formatted with XFS when it carries nothing (``blkid`` finds no
signature; a partition table is refused, not overwritten) and mounted at the pool directory
(``--pool-dir``), with project quotas when the kernel has them (the ``dir`` driver then enforces
capacity with them). The file-system drivers make each job's file system inside the pool.

Every step checks before it acts, so :func:`prepare` may run any number of times, and after a
``kill -9`` at any point: an existing loop device of the file is reused (``losetup --associated``,
and ``--nooverlap`` when attaching, so there is never a second one), a mount already there is kept
(if it is of this device), and a format that was interrupted (a marker file in the state directory
written before ``mkfs.xfs`` and removed after it) is done again. :func:`release_loop_file` detaches a
loop file's devices (``slurmlink quickstart down`` before deleting the files).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LogFn = Callable[[str], None]
DeviceKind = Literal["directory", "block", "loop"]

#: xfsprogs (5.19 and later) refuses file systems below 300 MB unless it believes it runs under
#: fstests, which it recognises by these variables; small test devices use them.
XFS_SMALL_LIMIT = 300_000_000
_XFS_SMALL_ENV = {"TEST_DIR": "/nonexistent", "TEST_DEV": "/nonexistent", "QA_CHECK_FS": "1"}
#: Label of the file systems the agent makes (XFS allows 12 characters).
FS_LABEL = "slurmlink"
FORMAT_MARKER = "format.pending"


class DeviceError(RuntimeError):
    """The device cannot be used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DeviceConfig:
    """What the agent was told to use."""

    kind: DeviceKind
    #: The directory, the block device, or the loop file.
    path: Path
    #: Where the pool lives: the directory itself, or where the device is mounted.
    pool_dir: Path
    #: The agent's own files (lock, format marker).
    state_dir: Path
    #: The loop file's size when the agent creates it.
    size: int | None = None
    #: Declared capacity (bytes), reported instead of the measured one.
    capacity: int | None = None

    @property
    def identity(self) -> str:
        """What a format marker names: the block device or the loop file."""
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class DeviceState:
    """The pool, ready: what the agent reports in its Storage."""

    pool_dir: Path
    #: Bytes the node offers (``status.capacity``): declared, else the pool file system's size.
    capacity: int
    #: ``status.devices`` entries (DWS ``StorageDevice``).
    devices: list[dict[str, Any]] = field(default_factory=list)
    #: The block or loop device carrying the pool (None for a directory).
    device: str | None = None
    fs_type: str | None = None
    #: Mounted with XFS project quotas.
    quota: bool = False
    #: The UUID of the pool's file system on ``device`` (compute nodes check it before mounting it).
    fs_uuid: str | None = None


# ---- commands --------------------------------------------------------------------------------------

_PACKAGES = {"losetup": "util-linux", "blkid": "util-linux", "mount": "mount", "mkfs.xfs": "xfsprogs"}


def _run(
    argv: Sequence[str], what: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell); DeviceError if the program is missing or fails."""
    if shutil.which(argv[0]) is None:
        package = _PACKAGES.get(argv[0])
        hint = f": install {package}" if package else ""
        raise DeviceError(f"{what}: {argv[0]} not found{hint}")
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what}: {' '.join(argv)} did not finish within {timeout:g} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DeviceError(f"{what}: {' '.join(argv)} failed (exit {result.returncode}): {detail}")
    return result


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise DeviceError(f"{what} needs root (losetup, mkfs and mount do): run the agent as root")


# ---- loop files ------------------------------------------------------------------------------------


def loop_devices(file: Path) -> list[str]:
    """The loop devices attached to ``file`` (compared by device and inode, as ``losetup -j`` does)."""
    if not file.exists():
        return []
    result = _run(
        ["losetup", "--associated", str(file), "--noheadings", "--output", "NAME"],
        f"listing the loop devices of {file}",
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _create_loop_file(file: Path, size: int, log: LogFn) -> None:
    """A sparse file of ``size`` bytes at ``file``, made beside it and renamed, so a crash leaves either
    nothing or the whole file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, file)
    log(f"created loop file {file} ({size} bytes, sparse)")


def _loop_file(config: DeviceConfig, log: LogFn) -> str:
    """Create the loop file if needed and return its loop device (attaching it if it has none)."""
    file = config.path
    _need_root(f"attaching loop file {file}")
    if file.exists():
        st = file.stat()
        if not stat.S_ISREG(st.st_mode):
            raise DeviceError(f"loop file {file} is not a regular file")
        if config.size is not None and st.st_size != config.size:
            log(f"loop file {file} exists with {st.st_size} bytes (--size says {config.size}); keeping it")
    else:
        if config.size is None:
            raise DeviceError(f"loop file {file} does not exist: give --size to let the agent create it")
        _create_loop_file(file, config.size, log)
    attached = loop_devices(file)
    if attached:
        if len(attached) > 1:
            log(f"loop file {file} is attached more than once ({', '.join(attached)}); using {attached[0]}")
        return attached[0]
    # --nooverlap returns the device already attached to the file, should one appear meanwhile.
    result = _run(["losetup", "--find", "--show", "--nooverlap", str(file)], f"attaching loop file {file}")
    device = result.stdout.strip()
    log(f"attached {file} as {device}")
    return device


def release_loop_file(file: Path, log: LogFn | None = None) -> list[str]:
    """Detach every loop device of ``file`` (one still mounted somewhere detaches when unmounted)."""
    devices = loop_devices(file)
    for device in devices:
        _run(["losetup", "--detach", device], f"detaching {device}")
        if log is not None:
            log(f"detached {device} ({file})")
    return devices


# ---- block devices -----------------------------------------------------------------------------------


def _block_device(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DeviceError(f"device {path} does not exist") from None
    except PermissionError:
        raise DeviceError(f"no permission to look at device {path}: run the agent as root") from None
    if not stat.S_ISBLK(st.st_mode):
        raise DeviceError(
            f"{path} is not a block device (use --directory for a directory, --loop-file for a file)"
        )
    return str(path)


def device_size(device: str) -> int:
    """Bytes of a block device."""
    try:
        fd = os.open(device, os.O_RDONLY)
    except PermissionError:
        raise DeviceError(f"no permission to open device {device}: run the agent as root") from None
    except OSError as exc:
        raise DeviceError(f"cannot open device {device}: {exc.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _sys_attribute(device: str, name: str) -> str | None:
    base = Path("/sys/class/block") / Path(os.path.realpath(device)).name
    with contextlib.suppress(OSError):
        value = (base / "device" / name).read_text().strip()
        return value or None
    return None


# ---- file system and mount ---------------------------------------------------------------------------


def probe(device: str) -> tuple[str | None, str | None]:
    """(file-system type, partition-table type) found on ``device`` by a low-level ``blkid`` probe."""
    if shutil.which("blkid") is None:
        raise DeviceError("probing the device: blkid not found: install util-linux")
    result = subprocess.run(
        ["blkid", "--probe", "--output", "export", device], capture_output=True, text=True, check=False
    )
    if result.returncode == 2:  # nothing found
        return None, None
    if result.returncode != 0:
        raise DeviceError(f"probing {device}: blkid failed: {(result.stderr or result.stdout).strip()}")
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return values.get("TYPE"), values.get("PTTYPE")


def fs_uuid(device: str) -> str | None:
    """The UUID of the file system on ``device`` (a low-level probe, no cache); None if none or unknown."""
    if shutil.which("blkid") is None:
        return None
    result = subprocess.run(
        ["blkid", "--probe", "--match-tag", "UUID", "--output", "value", device],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def _format(config: DeviceConfig, device: str, size: int, log: LogFn) -> str | None:
    """Format ``device`` with XFS if it is blank or an earlier format was interrupted; its fs type."""
    marker = config.state_dir / FORMAT_MARKER
    interrupted = False
    with contextlib.suppress(OSError, ValueError):
        interrupted = json.loads(marker.read_text()).get("device") == config.identity
    fs_type, table = probe(device)
    if fs_type and not interrupted:
        return fs_type
    if table and not fs_type:
        raise DeviceError(
            f"{config.path} holds a partition table ({table}) and no file system: give one of its "
            f"partitions, or wipe it (wipefs -a {config.path}) to let the agent format it"
        )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"device": config.identity}) + "\n")
    log(f"formatting {device} ({config.path}) with XFS" + (" again (interrupted)" if interrupted else ""))
    argv = ["mkfs.xfs", "-q", "-f", "-L", FS_LABEL, device]
    _run(argv, f"formatting {device}", env=_XFS_SMALL_ENV if size < XFS_SMALL_LIMIT else None, timeout=600)
    marker.unlink()
    return "xfs"


@dataclass(frozen=True)
class MountEntry:
    devno: str
    fs_type: str
    source: str
    options: str


def mount_at(path: Path) -> MountEntry | None:
    """The file system mounted at ``path`` in this mount namespace (the topmost), if any."""
    found = None
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-")
        except ValueError:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == target and len(fields) > dash + 3:
            found = MountEntry(fields[2], fields[dash + 1], fields[dash + 2], fields[dash + 3])
    return found


def _devno(device: str) -> str:
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _mount(config: DeviceConfig, device: str, fs_type: str | None, log: LogFn) -> bool:
    """Mount ``device`` at the pool directory unless it is; whether project quotas are on."""
    pool = config.pool_dir
    current = mount_at(pool)
    if current is not None:
        if current.devno != _devno(device):
            raise DeviceError(
                f"pool directory {pool} already has another file system mounted ({current.source}, "
                f"{current.fs_type}): unmount it or choose another --pool-dir"
            )
        return "prjquota" in current.options or "pquota" in current.options
    pool.mkdir(parents=True, exist_ok=True)
    if fs_type == "xfs":
        try:
            _run(["mount", "-t", "xfs", "-o", "prjquota", device, str(pool)], f"mounting {device}")
            log(f"mounted {device} at {pool} (xfs, project quotas)")
            return True
        except DeviceError:
            if mount_at(pool) is not None:
                raise
            log(
                f"{device}: XFS project quotas are not available here (mount -o prjquota failed; see "
                "dmesg); mounting without them, so dir/raw capacity is kept by accounting"
            )
    _run(["mount", device, str(pool)], f"mounting {device} at {pool}")
    log(f"mounted {device} at {pool} ({fs_type or 'auto'})")
    return False


def _fs_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


# ---- the whole --------------------------------------------------------------------------------------


def _directory(config: DeviceConfig) -> DeviceState:
    path = config.path
    if not path.exists():
        raise DeviceError(
            f"directory {path} does not exist: create it (or give --loop-file to let the agent make a "
            "loop file)"
        )
    if not path.is_dir():
        raise DeviceError(f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DeviceError(f"no permission to write to directory {path}: run the agent as its owner or root")
    size = _fs_size(path)
    return DeviceState(
        pool_dir=path,
        capacity=config.capacity or size,
        devices=[{"model": "directory", "slot": str(path), "capacity": size, "status": "Ready"}],
    )


def prepare(config: DeviceConfig, log: LogFn) -> DeviceState:
    """Make the pool ready (create, attach, format, mount: what is missing) and measure it."""
    if config.kind == "directory":
        return _directory(config)
    if config.kind == "loop":
        device = _loop_file(config, log)
    else:
        _need_root(f"using device {config.path}")
        device = _block_device(config.path)
    size = device_size(device)
    fs_type = _format(config, device, size, log)
    quota = _mount(config, device, fs_type, log)
    entry: dict[str, Any] = {"slot": device, "capacity": size, "status": "Ready"}
    if config.kind == "loop":
        entry.update(model="loop device", serialNumber=str(config.path))
    else:
        entry["model"] = _sys_attribute(device, "model") or "block device"
        serial = _sys_attribute(device, "serial")
        if serial:
            entry["serialNumber"] = serial
    return DeviceState(
        pool_dir=config.pool_dir,
        capacity=config.capacity or _fs_size(config.pool_dir),
        devices=[entry],
        device=device,
        fs_type=fs_type,
        quota=quota,
        fs_uuid=fs_uuid(device),
    )
