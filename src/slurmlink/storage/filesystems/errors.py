"""The drivers' errors: each message says what failed, on which node, and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(RuntimeError):
    """A file-system operation failed; the message names the node and what to do about it."""


class CommandError(StorageError):
    """A command run on a node exited non-zero (or timed out)."""

    def __init__(
        self,
        node: str,
        argv: Sequence[str],
        returncode: int | None,
        output: str,
        *,
        hint: str = "",
    ) -> None:
        self.node = node
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output.strip()
        status = "timed out" if returncode is None else f"failed with exit code {returncode}"
        message = f"on node {node}: `{' '.join(self.argv)}` {status}"
        if self.output:
            message += f": {self.output}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class MissingToolError(StorageError):
    """A program a driver needs is not installed on a node."""

    def __init__(self, node: str, tool: str) -> None:
        self.node = node
        self.tool = tool
        package = TOOL_PACKAGES.get(tool)
        fix = f"install the Debian package {package}" if package else f"install {tool}"
        super().__init__(f"{tool} not found on node {node}: {fix} there")


class NotSupportedError(StorageError):
    """The node lacks a kernel feature a driver needs (FUSE, loop devices, ...)."""


class CapacityError(StorageError):
    """Not enough space on the storage node for an allocation (or a buffer is over its capacity)."""


class StateError(StorageError):
    """What exists on a node does not match what the driver expects (or what was asked for)."""


class TransientError(StateError):
    """A condition the node's agent clears by itself when it tries again (a daemon it starts that
    does not answer yet): reported as waiting, not as a failure of the buffer."""


#: Where the programs the drivers run come from on Debian.
TOOL_PACKAGES = {
    "mkfs.xfs": "xfsprogs",
    "xfs_quota": "xfsprogs",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "findmnt": "util-linux",
    "blkid": "util-linux",
    "fallocate": "util-linux",
    "glusterd": "glusterfs-server",
    "gluster": "glusterfs-cli",
    "glusterfs": "glusterfs-client",
}
