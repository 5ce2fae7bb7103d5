"""The nodes of a dev cluster: persistent namespaces on this host, and running programs inside them.

A node is three namespaces pinned to files under ``state_dir/ns/<node>/`` (bind mounts of nsfs files, as
``unshare --net=FILE`` makes them), so they outlive the processes in them:

* ``net``: its own network stack, with loopback and ``eth0``, the node end of a veth pair whose host end is
  a port of the cluster's bridge; the bridge carries the controller's address (``.1`` of the cluster's /24),
  nodes have ``.100+i`` (compute) and ``.200+j`` (storage) and a default route via the bridge;
* ``uts``: its own hostname, the node's name;
* ``mnt``: its own mount namespace, a slave of the host's (mounts made on the host still appear in it, its
  own never leave it), with the cluster's hosts file on ``/etc/hosts``. A file system mounted inside one
  node is seen by that node's processes (slurmd, its jobs, a node agent) only.

Enter a node with :func:`node_command` (``nsenter --net= --uts= --mount=``, which execs the program, so the
spawned pid is the program's). Not ``ip netns exec``: it makes a new mount namespace on every call, and a
node agent must run in exactly the mount namespace the node's jobs see.

Host-side interface names and the /24 are global on the host: :func:`ensure_bridge` picks them under a
lock, so parallel clusters never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from slurmlink import supervise
from slurmlink.slurm.devcluster.errors import DevClusterError, LogFn
from slurmlink.slurm.devcluster.layout import NS_KINDS, SUBNET_POOL, SUBNET_POOL_ENV, Network, Node

#: nsenter's option for each pin file of a node.
_NSENTER_FLAGS = (("net", "net"), ("uts", "uts"), ("mount", "mnt"))
#: Serialises the choice of /24s and interface names between the dev clusters of this host.
NETWORK_LOCK = Path("/run/lock/slurmlink-dev-cluster-network.lock")


# ------------------------------------------------------------------------------ running inside a node


def node_command(
    node: Node,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> list[str]:
    """The argv that runs ``argv`` inside ``node`` (its network, hostname and mount namespace).

    ``user`` runs it as that user (``runuser -u``, which needs root and sets HOME/USER/LOGNAME);
    ``env`` adds variables (through ``env NAME=VALUE``, after the user switch); ``cwd`` is the working
    directory inside the node (entering a mount namespace otherwise leaves the program in ``/``). The
    caller's environment is passed on. No shell is involved: ``argv`` is passed as is.
    """
    return ns_command(node.ns_dir, argv, user=user, env=env, cwd=cwd)


def ns_command(
    ns_dir: Path,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> list[str]:
    """:func:`node_command` for the node whose pins are in ``ns_dir`` (``state_dir/ns/<node>``)."""
    if not argv:
        raise ValueError("empty argv")
    command = ["nsenter", *(f"--{flag}={ns_dir / kind}" for flag, kind in _NSENTER_FLAGS)]
    if cwd is not None:
        command.append(f"--wd={cwd}")
    command.append("--")
    if user is not None:
        command += ["runuser", "-u", user, "--"]
    if env:
        for key in env:
            if not key or "=" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        if "=" in argv[0]:
            raise ValueError(f"a program named {argv[0]!r} would be taken for a variable by env(1)")
        command += ["env", *(f"{key}={value}" for key, value in env.items())]
    return command + list(argv)


def run_in_node(
    node: Node,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """:func:`subprocess.run` of ``argv`` inside ``node``: output captured as text, no check by default."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("check", False)
    result: subprocess.CompletedProcess[str] = subprocess.run(
        node_command(node, argv, user=user, env=env, cwd=cwd), **kw
    )
    return result


def popen_in_node(
    node: Node,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    **kw: Any,
) -> subprocess.Popen[Any]:
    """:class:`subprocess.Popen` of ``argv`` inside ``node`` (the caller owns and waits for it)."""
    return subprocess.Popen(node_command(node, argv, user=user, env=env, cwd=cwd), **kw)


def spawn_in_node(
    node: Node,
    argv: Sequence[str],
    log_file: Path,
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    process_env: Mapping[str, str] | None = None,
) -> int:
    """A daemon inside ``node``: :func:`slurmlink.supervise.spawn_detached`, output appended to ``log_file``.

    Returns its pid, which is the program's own once nsenter has exec'd it (no ``user``) — so pid files
    and :func:`slurmlink.supervise.stop_pid` work as for any daemon. ``process_env`` is the environment
    nsenter starts with (default: this process's).
    """
    return supervise.spawn_detached(
        node_command(node, argv, user=user, env=env, cwd=cwd),
        log_file,
        env=dict(os.environ if process_env is None else process_env),
        cwd=Path("/"),
    )


def _ns_id(path: Path | str) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        st = os.stat(path)
        return st.st_dev, st.st_ino
    return None


def node_pids(node: Node) -> list[int]:
    """Live processes inside ``node`` (in its network or mount namespace); [] if it does not exist."""
    wanted = {ns for ns in (_ns_id(node.net_ns), _ns_id(node.mnt_ns)) if ns is not None}
    if not node_exists(node) or not wanted:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if {_ns_id(entry / "ns" / "net"), _ns_id(entry / "ns" / "mnt")} & wanted and supervise.process_alive(
            int(entry.name)
        ):
            pids.append(int(entry.name))
    return sorted(pids)


def kill_node_processes(node: Node, timeout: float, log: LogFn) -> None:
    """SIGTERM every process inside ``node``, SIGKILL what is left after ``timeout`` seconds."""
    pids = node_pids(node)
    if not pids:
        return
    log(f"node {node.name}: stopping {len(pids)} process(es) left inside it")
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(supervise.POLL_INTERVAL)
            pids = [pid for pid in pids if supervise.process_alive(pid)]
        pids = node_pids(node)  # also anything forked meanwhile
        if not pids:
            return
    raise DevClusterError(f"node {node.name}: processes {pids} survived SIGKILL")


# ------------------------------------------------------------------------------------ host state


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def mounts() -> dict[str, str]:
    """This process's mount points and their file system types (the last mount on a path wins)."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        with contextlib.suppress(ValueError, IndexError):
            found[_unescape_mountinfo(fields[4])] = fields[fields.index("-") + 1]
    return found


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them in)."""
    prefix = str(directory)
    points = [p for p in mounts() if p == prefix or p.startswith(prefix + "/")]
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _run(argv: Sequence[str], what: str, *, input: str | None = None) -> str:
    try:
        result = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevClusterError(f"{what}: {' '.join(argv)}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise DevClusterError(f"{what}: {' '.join(argv)} failed ({result.returncode}): {detail}")
    return result.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    text = _run(["ip", "-j", *args], "reading the host's network")
    data = json.loads(text or "[]")
    return [item for item in data if isinstance(item, dict)]


def links() -> dict[str, dict[str, Any]]:
    """The host namespace's network interfaces by name (``ip -j link show``)."""
    return {str(link["ifname"]): link for link in _ip_json("link", "show") if "ifname" in link}


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this host has an address in or a route to (all routing tables)."""
    used = []
    for link in _ip_json("-4", "addr", "show"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    return used


def _bridge_address(bridge: str) -> set[str]:
    addresses = set()
    for link in _ip_json("-4", "addr", "show", "dev", bridge):
        for info in link.get("addr_info", []):
            addresses.add(f"{info.get('local')}/{info.get('prefixlen')}")
    return addresses


@contextlib.contextmanager
def _network_lock() -> Iterator[None]:
    NETWORK_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(NETWORK_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pick_network(seed: str, previous: Network | None, names: set[str]) -> Network:
    """A cluster id whose interface names are free and a /24 of :data:`SUBNET_POOL` nobody uses."""
    used = _networks_in_use()
    cluster_id = previous.cluster_id if previous is not None else ""
    counter = 0
    while not cluster_id or any(name.startswith(f"sl{cluster_id}") for name in names):
        cluster_id = hashlib.sha256(f"{seed}\0{counter}".encode()).hexdigest()[:6]
        counter += 1
    if previous is not None and not any(previous.subnet.overlaps(net) for net in used):
        return Network(cluster_id, previous.subnet)
    pool = subnet_pool()
    subnets = list(pool.subnets(new_prefix=24))
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(subnets)
    for offset in range(len(subnets)):
        subnet = subnets[(start + offset) % len(subnets)]
        if not any(subnet.overlaps(net) for net in used):
            return Network(cluster_id, subnet)
    raise DevClusterError(
        f"no /24 in {pool} is free of this host's addresses and routes for the dev cluster's network; "
        f"set {SUBNET_POOL_ENV} to another private range (e.g. 172.30.0.0/16)"
    )


def subnet_pool() -> ipaddress.IPv4Network:
    """Where clusters' /24s come from: ``$SLURMLINK_DEV_CLUSTER_SUBNETS`` (a /24 or larger), else
    :data:`SUBNET_POOL`."""
    text = os.environ.get(SUBNET_POOL_ENV, "").strip()
    if not text:
        return SUBNET_POOL
    try:
        pool = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise DevClusterError(f"{SUBNET_POOL_ENV}={text!r}: {exc}") from None
    if pool.prefixlen > 24:
        raise DevClusterError(f"{SUBNET_POOL_ENV}={text!r}: needs a /24 or larger")
    return pool


def _stable_mac(cluster_id: str) -> str:
    """A locally administered unicast MAC for the bridge, so it does not change as ports come and go."""
    return "02:5e:" + ":".join(cluster_id[i : i + 2] for i in range(0, 6, 2)) + ":01"


def ensure_bridge(seed: str, previous: Network | None, log: LogFn) -> tuple[Network, bool]:
    """The cluster's bridge, up with the controller address: kept if it exists, else made.

    ``previous`` is the network an earlier ``up`` recorded: reused when its /24 is still free, so the
    nodes keep their addresses. ``seed`` (the state dir) spreads clusters over the pool. Returns the
    network and whether this call created the bridge.
    """
    with _network_lock():
        names = set(links())
        if previous is not None and previous.bridge in names:
            wanted = f"{previous.controller_address}/{previous.prefixlen}"
            if wanted in _bridge_address(previous.bridge):
                _run(["ip", "link", "set", previous.bridge, "up"], "bringing the bridge up")
                return previous, False
            log(f"bridge {previous.bridge} lost its address; re-creating it")
            _run(["ip", "link", "del", previous.bridge], "deleting a broken bridge")
            names.discard(previous.bridge)
        reuse = previous if previous is not None and previous.bridge not in names else None
        network = _pick_network(seed, reuse, names)
        log(f"network {network.subnet}: bridge {network.bridge} at {network.controller_address}")
        batch = (
            f"link add {network.bridge} type bridge\n"
            f"link set {network.bridge} address {_stable_mac(network.cluster_id)}\n"
            f"addr add {network.controller_address}/{network.prefixlen} dev {network.bridge}\n"
            f"link set {network.bridge} up\n"
        )
        try:
            _run(["ip", "-batch", "-"], f"creating bridge {network.bridge}", input=batch)
        except DevClusterError:
            with contextlib.suppress(DevClusterError):
                _run(["ip", "link", "del", network.bridge], "deleting a half-made bridge")
            raise
        return network, True


def remove_bridge(network: Network, log: LogFn) -> None:
    """Delete the bridge and any host interface left with this cluster's name prefix."""
    prefix = f"sl{network.cluster_id}"
    for name in sorted(links(), key=lambda n: n == network.bridge):  # the bridge last
        if name.startswith(prefix):
            log(f"deleting interface {name}")
            with contextlib.suppress(DevClusterError):
                _run(["ip", "link", "del", name], f"deleting {name}")
    left = [name for name in links() if name.startswith(prefix)]
    if left:
        raise DevClusterError(f"could not delete interface(s) {', '.join(left)}")


def ensure_ns_dir(ns_dir: Path) -> None:
    """Make ``ns_dir`` a private mount of itself: namespace pins must not live on a shared mount."""
    ns_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if str(ns_dir) not in mounts():
        _run(["mount", "--bind", str(ns_dir), str(ns_dir)], "mounting the namespace directory")
    _run(["mount", "--make-private", str(ns_dir)], "making the namespace directory private")


def release_ns_dir(ns_dir: Path) -> None:
    """Unmount everything at or under ``ns_dir`` (pins, then the directory itself) and remove it."""
    for point in mounts_under(ns_dir):
        _unmount(point)
    if ns_dir.exists():
        shutil.rmtree(ns_dir)


def _unmount(point: str) -> None:
    """Unmount ``point``; detach it lazily if it is busy (e.g. someone holds a namespace pin open: the
    namespace then lives on with that file, but nothing is left in the mount table)."""
    try:
        _run(["umount", point], f"unmounting {point}")
    except DevClusterError:
        _run(["umount", "--lazy", point], f"unmounting {point}")


# ----------------------------------------------------------------------------------------- nodes


def node_exists(node: Node) -> bool:
    """All three namespaces of ``node`` are pinned (its directory holds nsfs mounts)."""
    table = mounts()
    return all(table.get(str(node.ns_dir / kind)) == "nsfs" for kind in NS_KINDS)


def node_healthy(node: Node, network: Network, host_links: Mapping[str, Mapping[str, Any]]) -> bool:
    """Pinned, and its veth is a port of the bridge (``host_links``: :func:`links`)."""
    veth = host_links.get(node.host_veth)
    return node_exists(node) and veth is not None and veth.get("master") == network.bridge


def create_node(node: Node, network: Network, hosts_file: Path) -> None:
    """Make ``node``'s namespaces, its veth pair on the bridge, its address, hostname and /etc/hosts.

    ``ns_dir`` (the parent of every node's pins) must be a private mount (:func:`ensure_ns_dir`). On
    failure the caller removes the node (:func:`remove_node`).
    """
    what = f"creating node {node.name}"
    node.ns_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for kind in NS_KINDS:
        (node.ns_dir / kind).touch()
    # unshare binds the new namespaces onto the files; "hostname" runs in the new UTS namespace. The mount
    # namespace is a slave of the host's: host mounts propagate into it, its own stay inside.
    _run(
        [
            "unshare",
            f"--net={node.net_ns}",
            f"--uts={node.uts_ns}",
            f"--mount={node.mnt_ns}",
            "--propagation",
            "slave",
            "--",
            "hostname",
            node.name,
        ],
        what,
    )
    peer = ["peer", "name", "eth0", "netns", str(node.net_ns)]
    _run(["ip", "link", "add", node.host_veth, "type", "veth", *peer], what)
    _run(["ip", "link", "set", node.host_veth, "master", network.bridge, "up"], what)
    batch = (
        "link set lo up\n"
        f"addr add {node.address}/{network.prefixlen} dev eth0\n"
        "link set eth0 up\n"
        f"route add default via {network.controller_address}\n"
    )
    _run(["nsenter", f"--net={node.net_ns}", "--", "ip", "-batch", "-"], what, input=batch)
    _run(node_command(node, ["mount", "--bind", str(hosts_file), "/etc/hosts"]), what)
    # Its copy of the pin directory would keep older nodes' namespaces alive as long as this one lives.
    _run(node_command(node, ["umount", "--lazy", str(node.ns_dir.parent)]), what)


def remove_node(node: Node, timeout: float, log: LogFn) -> None:
    """Stop every process inside ``node`` (SIGKILL after ``timeout`` seconds, at most 3: what is left once
    its daemons have stopped are job steps, and slurmstepd ignores SIGTERM), delete its veth, unpin its
    namespaces, remove its directory."""
    kill_node_processes(node, min(timeout, 3.0), log)
    if node.host_veth in links():
        _run(["ip", "link", "del", node.host_veth], f"deleting {node.host_veth}")
    for point in mounts_under(node.ns_dir):
        _unmount(point)
    if node.ns_dir.exists():
        shutil.rmtree(node.ns_dir)


def write_hosts_file(
    path: Path, network: Network, nodes: Sequence[Node], controller_names: Sequence[str]
) -> bool:
    """/etc/hosts for the nodes; written in place (bind mounts hold the inode). Returns whether it changed."""
    lines = [
        "# Generated by slurmlink dev-cluster: /etc/hosts inside the cluster's nodes.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{network.controller_address}\t{' '.join(controller_names)}",
        *(f"{node.address}\t{node.name}" for node in nodes),
    ]
    text = "\n".join(lines) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.write(text)
    path.chmod(0o644)
    return True
