"""Node agents in a dev cluster's nodes (the quick start's): start, keep, stop, clean up.

One ``slurmlink agent`` per storage node runs inside the node's namespaces (``spawn_in_node``: its
network, hostname and mount namespace, so the pool it mounts is the node's own), with its own
node-agent kubeconfig naming the API where the nodes reach it (the cluster bridge's address). Its
device is a sparse loop file under the base directory. Files, for node ``storage1``::

    BASE/storage1.img                 the loop file
    BASE/storage1/                    the agent's state dir: lock, format marker, pool/ (mount point)
    BASE/storage1/node-agent.kubeconfig
    RUN/agent.storage1.pid, RUN/agent.storage1.json (argv and kubeconfig hash it runs with)
    LOG/agent.storage1.log

Like the cluster's daemons, an agent is found again by its pid file and a command line that names its
node and state dir; one that runs with other arguments or another kubeconfig is restarted.

A storage agent starts its node's glusterd when the node first serves a gluster buffer; it outlives
the agent (bricks keep serving while an agent restarts) and is stopped by ``stop_all`` (quick start
``down``).

Each compute node runs ``slurmlink agent --compute`` the same way (inside the node, with its own
node-agent kubeconfig, state dir ``BASE/compute1/``, pid file and log): it mounts the burst buffers of
the node's jobs (DWS ClientMounts). It has no loop file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmlink import supervise
from slurmlink.agent.device import DeviceError, release_loop_file
from slurmlink.slurm.devcluster import DevCluster, Node, spawn_in_node

LogFn = Callable[[str], None]
AGENT_PREFIX = ("-m", "slurmlink.cli.main", "agent")


def _option(argv: Sequence[str], name: str) -> str | None:
    with contextlib.suppress(ValueError, IndexError):
        return argv[list(argv).index(name) + 1]
    return None


@dataclass(frozen=True)
class AgentFiles:
    node: str
    base: Path
    run_dir: Path
    log_dir: Path

    @property
    def state_dir(self) -> Path:
        return self.base / self.node

    @property
    def loop_file(self) -> Path:
        return self.base / f"{self.node}.img"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "node-agent.kubeconfig"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"agent.{self.node}.pid"

    @property
    def settings_file(self) -> Path:
        return self.run_dir / f"agent.{self.node}.json"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"agent.{self.node}.log"

    def matches(self, argv: Sequence[str]) -> bool:
        """Whether a process with command line ``argv`` is this node's agent (not a reused pid)."""
        return (
            bool(argv)
            and Path(argv[0]).name.startswith("python")
            and tuple(argv[1 : 1 + len(AGENT_PREFIX)]) == AGENT_PREFIX
            and _option(argv, "--node") == self.node
            and _option(argv, "--state-dir") == str(self.state_dir)
        )


class DevClusterAgents:
    """The node agents of ``cluster`` (storage and compute), with their files under ``base`` (loop files,
    state dirs)."""

    def __init__(self, cluster: DevCluster, base: Path, run_dir: Path, log_dir: Path, log: LogFn) -> None:
        self.cluster = cluster
        self.base = base
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.log = log

    def files(self, node: str) -> AgentFiles:
        return AgentFiles(node, self.base, self.run_dir, self.log_dir)

    def argv(
        self, node: str, *, size: int, capacity: int | None = None, extra: Sequence[str] = ()
    ) -> list[str]:
        f = self.files(node)
        return [
            sys.executable,
            *AGENT_PREFIX,
            *("--node", node),
            *("--kubeconfig", str(f.kubeconfig)),
            *("--loop-file", str(f.loop_file), "--size", str(size)),
            *(("--capacity", str(capacity)) if capacity is not None else ()),
            *("--state-dir", str(f.state_dir)),
            *("--log-format", "console"),
            *extra,
        ]

    def compute_argv(self, node: str, *, extra: Sequence[str] = ()) -> list[str]:
        """The compute-mode agent of compute node ``node`` (no device: it performs ClientMounts)."""
        f = self.files(node)
        return [
            sys.executable,
            *AGENT_PREFIX,
            *("--node", node),
            *("--kubeconfig", str(f.kubeconfig)),
            "--compute",
            *("--state-dir", str(f.state_dir)),
            *("--log-format", "console"),
            *extra,
        ]

    def pid(self, node: str) -> int | None:
        f = self.files(node)
        return supervise.running_pid(f.pid_file, f.matches)

    def known_nodes(self) -> list[str]:
        """Nodes that have (or had) an agent here: those with a pid file."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                p.name[len("agent.") : -len(".pid")] for p in self.run_dir.glob("agent.*.pid") if p.is_file()
            )
        return []

    def _settings(self, node: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            value = json.loads(self.files(node).settings_file.read_text())
            return value if isinstance(value, dict) else None
        return None

    def ensure(self, node: Node, argv: list[str]) -> tuple[int, bool]:
        """Keep the node's agent if it runs with ``argv`` and the same kubeconfig, else (re)start it.

        Returns its pid and whether this call started it.
        """
        f = self.files(node.name)
        what = "compute agent" if "--compute" in argv else "storage agent"
        wanted = {"argv": argv, "kubeconfig_sha256": hashlib.sha256(f.kubeconfig.read_bytes()).hexdigest()}
        pid = self.pid(node.name)
        if pid is not None and (self._settings(node.name) != wanted or supervise.cmdline(pid) != argv):
            self.log(f"{what} on {node.name}: options or kubeconfig changed; restarting it")
            self.stop(node.name)
            pid = None
        if pid is not None:
            return pid, False
        for path in (f.state_dir, self.run_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.log(f"starting the {what} on {node.name} (log {f.log_file})")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        pid = spawn_in_node(node, argv, f.log_file, process_env=env)
        supervise.write_pid(f.pid_file, pid)
        tmp = f.settings_file.with_name(f".{f.settings_file.name}.tmp")
        tmp.write_text(json.dumps(wanted, indent=2) + "\n")
        tmp.replace(f.settings_file)
        return pid, True

    def stop(self, node: str, timeout: float = 10) -> None:
        f = self.files(node)
        pid = self.pid(node)
        if pid is not None:
            supervise.stop_pid(pid, f"the agent on {node}", timeout, self.log)
        for path in (f.pid_file, f.settings_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stop_all(self, timeout: float = 10) -> None:
        for node in self.known_nodes():
            self.stop(node, timeout)
            self.stop_glusterd(node)

    def stop_glusterd(self, node: str) -> None:
        """Stop the glusterd (and its bricks) a storage agent started in ``node``: it outlives its agent,
        as a system service would, and would keep the node's pool busy."""
        from slurmlink.storage.filesystems import Glusterd, NodeRunner, StorageNode

        pool = self.files(node).state_dir / "pool"
        try:
            target = self.cluster.node(node)
        except Exception:
            return  # not a node of this cluster (any more)
        try:
            runner = NodeRunner(node, wrap=lambda argv: self.cluster.node_command(target, argv))
            glusterd = Glusterd(StorageNode(node, str(pool)), runner)
            if glusterd.pid() is not None or glusterd.daemon_pids():
                self.log(f"stopping glusterd on {node}")
                glusterd.stop()
        except Exception as exc:  # the node is gone already (and its processes with it), or never was
            self.log(f"glusterd on {node} not stopped: {exc}")

    def release(self) -> None:
        """Detach the loop devices of every loop file here (after the nodes, and their mounts, are gone)."""
        with contextlib.suppress(FileNotFoundError):
            for image in sorted(self.base.glob("*.img")):
                try:
                    release_loop_file(image, self.log)
                except DeviceError as exc:
                    self.log(f"could not detach {image}: {exc}")

    def log_tail(self, node: str, lines: int = 15) -> str:
        return supervise.log_tail([self.files(node).log_file], lines)


# ---- the API side: Storage objects and default pools -------------------------------------------------

#: The StoragePools the quick start makes, one per file-system type it can serve (name, types).
DEFAULT_POOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("xfs", ("xfs",)),
    ("gluster", ("gluster",)),
    ("dir", ("dir",)),
    ("raw", ("raw",)),
)
#: Marks the pools the quick start made (and so keeps in step with the cluster's storage nodes).
QUICKSTART_POOL_LABEL = "slurmlink.io/quickstart"


class StorageSetupError(RuntimeError):
    """The storage nodes did not come up; the message says which and shows their agents' logs."""


def _registered(obj: dict[str, Any]) -> bool:
    """Ready, or drained (Disabled) by an admin: either way its agent has reported."""
    status = (obj.get("status") or {}).get("status")
    drained = (obj.get("spec") or {}).get("state") == "Disabled"
    return status == "Ready" or (drained and status == "Disabled")


async def setup_storage_api(
    admin_kubeconfig: Path,
    agents: DevClusterAgents,
    nodes: Sequence[str],
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Wait until every node's Storage is Ready, drop those of nodes the cluster no longer has, and
    make the default pools over ``nodes``; returns the Storage objects by name."""
    import asyncio
    import time

    from slurmlink.client.http import HttpClient
    from slurmlink.resources import errors
    from slurmlink.resources.coordination import LEASE, NODE_LEASE_NAMESPACE
    from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE, STORAGE_TYPE_LABEL
    from slurmlink.resources.storage.capacity import AGENT_STORAGE_TYPE
    from slurmlink.resources.storage.storagepool import STORAGE_POOL
    from slurmlink.slurm.devcluster.layout import STORAGE as STORAGE_ROLE
    from slurmlink.slurm.devcluster.layout import parse_node_name

    client = HttpClient.from_kubeconfig(admin_kubeconfig)
    deadline = time.monotonic() + timeout
    try:
        items, _ = await client.list(STORAGE, STORAGE_NAMESPACE, f"{STORAGE_TYPE_LABEL}={AGENT_STORAGE_TYPE}")
        for obj in items:
            name = obj["metadata"]["name"]
            parsed = parse_node_name(name)
            if name in nodes or parsed is None or parsed[0] != STORAGE_ROLE:
                continue
            agents.log(f"removing Storage {name}: the cluster has no such storage node any more")
            for kind, namespace in ((STORAGE, STORAGE_NAMESPACE), (LEASE, NODE_LEASE_NAMESPACE)):
                with contextlib.suppress(errors.ApiError):
                    await client.delete(kind, namespace, name)
        while True:
            items, _ = await client.list(STORAGE, STORAGE_NAMESPACE)
            found = {o["metadata"]["name"]: o for o in items if o["metadata"]["name"] in nodes}
            waiting = [n for n in nodes if n not in found or not _registered(found[n])]
            if not waiting:
                break
            for node in nodes:
                if agents.pid(node) is None:
                    raise StorageSetupError(f"the storage agent on {node} exited:\n{agents.log_tail(node)}")
            if time.monotonic() > deadline:
                states = ", ".join(
                    f"{n}: {((found.get(n) or {}).get('status') or {}).get('status') or 'not registered'}"
                    for n in waiting
                )
                tails = "\n".join(agents.log_tail(n) for n in waiting)
                raise StorageSetupError(f"storage nodes not Ready within {timeout:g} s ({states}):\n{tails}")
            await asyncio.sleep(0.2)
        if nodes:
            for pool_name, types in DEFAULT_POOLS:
                await _ensure_pool(client, STORAGE_POOL, pool_name, types, list(nodes), agents.log)
        return found
    finally:
        await client.aclose()


async def _ensure_pool(
    client: Any, kind: Any, name: str, types: tuple[str, ...], nodes: list[str], log: LogFn
) -> None:
    from slurmlink.resources import errors

    try:
        pool = await client.get(kind, None, name)
    except errors.ApiError as exc:
        if exc.code != 404:
            raise
        body = {
            "apiVersion": kind.api_version(kind.storage_version),
            "kind": kind.kind,
            "metadata": {"name": name, "labels": {QUICKSTART_POOL_LABEL: "default"}},
            "spec": {"fileSystemTypes": list(types), "nodes": nodes},
        }
        await client.create(kind, body)
        log(f"created StoragePool {name} ({', '.join(types)}) over {', '.join(nodes)}")
        return
    labels = (pool.get("metadata") or {}).get("labels") or {}
    if labels.get(QUICKSTART_POOL_LABEL) == "default" and (pool.get("spec") or {}).get("nodes") != nodes:
        await client.patch(kind, None, name, {"spec": {"nodes": nodes}})
        log(f"StoragePool {name} now over {', '.join(nodes)}")


async def storage_objects(admin_kubeconfig: Path) -> dict[str, dict[str, Any]]:
    """The Storage objects by name (for ``quickstart status``); empty if the API does not answer."""
    from slurmlink.client.http import HttpClient
    from slurmlink.resources import errors
    from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE

    try:
        client = HttpClient.from_kubeconfig(admin_kubeconfig, timeout=5.0)
    except (OSError, ValueError):
        return {}
    try:
        items, _ = await client.list(STORAGE, STORAGE_NAMESPACE)
    except errors.ApiError:
        return {}
    finally:
        await client.aclose()
    return {o["metadata"]["name"]: o for o in items}
