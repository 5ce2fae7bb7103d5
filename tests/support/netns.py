"""Simulated nodes for storage tests: network namespaces on a bridge, and pinned mount namespaces.

Minimal on purpose (the multi-node dev cluster provides the real nodes): ``NetworkLab`` puts N network
namespaces on a private bridge, each with one address on a free /24 that the host reaches too;
``MountNamespaces`` pins N mount namespaces as files (``unshare --mount=FILE``) so each "compute node"
has mounts of its own. Both give a :class:`NodeRunner` per node (``nsenter ... --``) and remove
everything they made on exit; a node with both (a storage node that mounts its bricks) enters both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurmlink.storage.filesystems.runner import NodeRunner


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _run(["ip", "-4", "-json", "route", "show", "table", "all"]).stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default" and ":" not in dst:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of this host touches."""
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free /24 in 10.200.0.0/13 for the test network")


@dataclass(frozen=True)
class NetNode:
    name: str
    netns: str
    address: str
    runner: NodeRunner


class NetworkLab:
    """A bridge with ``count`` network namespaces on it (``with NetworkLab(3) as lab: lab.nodes``)."""

    def __init__(self, count: int, name_prefix: str = "st") -> None:
        self.count = count
        self.tag = secrets.token_hex(3)
        self.name_prefix = name_prefix
        self.bridge = f"slb{self.tag}"
        self.nodes: list[NetNode] = []
        self.host_address = ""
        self._links: list[str] = []
        self._netns: list[str] = []

    def __enter__(self) -> NetworkLab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        subnet = free_subnet()
        hosts = list(subnet.hosts())
        self.host_address = str(hosts[0])
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._links.append(self.bridge)
        _run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for index in range(1, self.count + 1):
            netns = f"sl-{self.tag}-{index}"
            veth = f"slv{self.tag}{index}"
            address = str(hosts[index])
            _run(["ip", "netns", "add", netns])
            self._netns.append(netns)
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
            self._links.append(veth)
            _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
            _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
            runner = NodeRunner(
                name=f"{self.name_prefix}{index}", prefix=("nsenter", f"--net=/run/netns/{netns}", "--")
            )
            self.nodes.append(NetNode(runner.name, netns, address, runner))

    def close(self) -> None:
        for netns in reversed(self._netns):
            _run(["ip", "netns", "delete", netns], check=False)
        for link in reversed(self._links):
            _run(["ip", "link", "delete", link], check=False)
        self._netns.clear()
        self._links.clear()


class MountNamespaces:
    """``names`` mount namespaces pinned as files in ``directory`` (a private bind mount of itself)."""

    def __init__(self, directory: Path, names: Sequence[str]) -> None:
        self.directory = directory
        self.names = list(names)
        self.runners: dict[str, NodeRunner] = {}
        self._bound = False
        self._pinned: list[Path] = []

    def __enter__(self) -> MountNamespaces:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _run(["mount", "--bind", str(self.directory), str(self.directory)])
            self._bound = True
            _run(["mount", "--make-private", str(self.directory)])
            for name in self.names:
                pin = self.directory / name
                pin.touch()
                _run(["unshare", f"--mount={pin}", "--propagation=private", "true"])
                self._pinned.append(pin)
                self.runners[name] = NodeRunner(name=name, prefix=("nsenter", f"--mount={pin}", "--"))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pin(self, name: str) -> Path:
        """The file pinning namespace ``name`` (what ``nsenter --mount=`` takes)."""
        return self.directory / name

    def leftover_mounts(self, name: str, below: Path) -> list[str]:
        """Mount points below ``below`` in namespace ``name``."""
        out = self.runners[name].run(["findmnt", "--json", "--list", "--output", "TARGET"]).stdout
        prefix = str(below).rstrip("/") + "/"
        return [
            fs["target"] for fs in json.loads(out).get("filesystems", []) if fs["target"].startswith(prefix)
        ]

    def close(self, below: Path | None = None) -> None:
        for pin in reversed(self._pinned):
            if below is not None:
                # A FUSE daemon inside the namespace would keep it alive after unpinning: unmount first.
                for target in reversed(self.leftover_mounts(pin.name, below)):
                    self.runners[pin.name].run(["umount", "-l", target], check=False)
            _run(["umount", str(pin)], check=False)
            with contextlib.suppress(OSError):
                pin.unlink()
        self._pinned.clear()
        if self._bound:
            _run(["umount", str(self.directory)], check=False)
            self._bound = False
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
