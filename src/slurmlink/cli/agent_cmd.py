"""``slurmlink agent``: the node agent (storage nodes; ``--compute``: compute nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slurmlink.cli.resources_cmd import kubeconfig_options, log_options, open_client, setup_client_logging

if TYPE_CHECKING:
    from slurmlink.agent.device import DeviceConfig
    from slurmlink.agent.storage_agent import AgentSettings
    from slurmlink.client.http import HttpClient

#: An agent's ``run(stop)``.
AgentRun = Callable[[asyncio.Event], Awaitable[None]]
DEFAULT_STATE_DIR = Path("/var/lib/slurmlink/agent")
LOCK_FILE = "agent.lock"

log = logging.getLogger("slurmlink.agent")


def _size(value: str | None, option: str) -> int | None:
    from slurmlink.resources.sizes import SizeError, parse_size

    if value is None:
        return None
    try:
        size = parse_size(value.strip())
    except SizeError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    if size < 1:
        raise click.BadParameter("must be at least 1 byte", param_hint=option)
    return size


@contextlib.contextmanager
def agent_lock(state_dir: Path) -> Iterator[None]:
    """One agent per state directory: a second one is refused, naming the first's pid."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise click.ClickException(
                f"another agent runs with state directory {state_dir} (pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


async def _run_agent(
    node: str,
    address: str | None,
    heartbeat_interval: float,
    lease_duration: int,
    kubeconfig: Path | None,
    context: str | None,
    start: Callable[[HttpClient, AgentSettings], Awaitable[AgentRun]],
) -> None:
    """Connect, build the node's settings, run the agent ``start`` returns until SIGINT/SIGTERM."""
    from slurmlink.agent.storage_agent import AgentSettings, default_address

    client = open_client(kubeconfig, context, timeout=10.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        settings = AgentSettings(
            node=node,
            address=address or default_address(client.server),
            heartbeat_interval=heartbeat_interval,
            device_interval=heartbeat_interval,
            lease_duration=lease_duration,
        )
        run = await start(client, settings)
        await run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.aclose()
        log.info("agent stopped")


def _compute_agent(node: str, state_dir: Path) -> Callable[[HttpClient, AgentSettings], Awaitable[AgentRun]]:
    async def start(
        client: HttpClient, settings: AgentSettings
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        from slurmlink.agent.compute_agent import ComputeAgent

        log.info("compute agent for node %s: API %s, state %s", node, client.server, state_dir)
        return ComputeAgent(client, settings, state_dir, server=client.server).run

    return start


def _storage_agent(
    device: DeviceConfig, node: str
) -> Callable[[HttpClient, AgentSettings], Awaitable[AgentRun]]:
    async def start(
        client: HttpClient, settings: AgentSettings
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        from slurmlink.agent.storage_agent import StorageAgent

        log.info(
            "agent for node %s: %s %s, pool %s, API %s, address %s",
            node,
            device.kind,
            device.path,
            device.pool_dir,
            client.server,
            settings.address,
        )
        return StorageAgent(client, device, settings, server=client.server).run

    return start


@click.command("agent")
@click.option("--node", required=True, help="The node this agent runs on (names its Storage and Lease).")
@kubeconfig_options
@click.option(
    "--compute",
    is_flag=True,
    help="Run the agent of a compute node: perform the node's ClientMounts (no device options).",
)
@click.option(
    "--device",
    type=click.Path(path_type=Path),
    help="A block device for the pool (formatted with XFS if blank, mounted at --pool-dir).",
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory that is the pool as it is (capacity: its file system's size, or --capacity).",
)
@click.option(
    "--loop-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file the agent creates (sparse, --size) and attaches as a loop device, formatted with XFS "
    "and mounted at --pool-dir; the same file is re-attached after a restart.",
)
@click.option("--size", metavar="SIZE", help="Size of a new --loop-file, e.g. 4GiB.")
@click.option(
    "--capacity",
    metavar="SIZE",
    help="Capacity to report instead of the measured one (may exceed the device, for a dir pool).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    help="The agent's own files (lock, format marker); the pool's mount point by default.",
)
@click.option(
    "--pool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where a --device or --loop-file is mounted (default: STATE_DIR/pool).",
)
@click.option(
    "--address",
    help="The node's address as others reach it (default: the one it uses towards the API).",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between renewals of the node's Lease (and checks of the device).",
)
@click.option(
    "--lease-duration",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="leaseDurationSeconds written into the Lease (the controller's own timeout decides).",
)
@log_options
def agent(
    node: str,
    kubeconfig: Path | None,
    context: str | None,
    compute: bool,
    device: Path | None,
    directory: Path | None,
    loop_file: Path | None,
    size: str | None,
    capacity: str | None,
    state_dir: Path,
    pool_dir: Path | None,
    address: str | None,
    heartbeat_interval: float,
    lease_duration: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run the agent of storage node NODE: register its DWS Storage, keep its status, heartbeat.

    The agent makes the node's device ready as its pool — a directory as it is, or a block device or
    loop file formatted with XFS when blank and mounted at --pool-dir — and registers the Storage
    named NODE (namespace default) with its capacity, devices, address and status (Ready; Disabled
    while an admin has drained it with 'slurmlink storage drain'; Failed while the device is
    unusable). It renews the Lease slurmlink-node-lease/NODE every --heartbeat-interval; when the
    renewals stop, the server's storage-heartbeat controller marks the Storage Offline.

    It also makes the node's burst buffers: the StorageAllocations placed on NODE become file systems
    in its pool (created, restored after a restart, destroyed when deleted).

    With --compute it is the agent of compute node NODE instead: it performs the node's DWS
    ClientMounts (mounting the burst buffers of the node's jobs) and heartbeats its Lease.

    Use a node-agent kubeconfig for NODE ('slurmlink kubeconfig --role node-agent --node NODE'). Run
    as root for a device or loop file. Restart-safe: kill it at any point, start it again, and it
    finds its loop device, mount and Storage again. Runs until SIGINT or SIGTERM.
    """
    from slurmlink.agent.device import DeviceConfig
    from slurmlink.auth.roles import node_name_error
    from slurmlink.cli.resources_cmd import CliError

    problem = node_name_error(node)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--node")
    given = (("device", device), ("directory", directory), ("loop-file", loop_file))
    chosen = [(name, value) for name, value in given if value is not None]
    if compute:
        extra = [f"--{name}" for name, value in given if value is not None]
        others = (("--size", size), ("--capacity", capacity), ("--pool-dir", pool_dir))
        extra += [name for name, value in others if value is not None]
        if extra:
            raise click.UsageError(f"{', '.join(extra)}: not for --compute (a compute node has no pool)")
        state_dir = Path(os.path.abspath(state_dir))
        setup_client_logging(log_level, log_format)
        from slurmlink.agent.storage_agent import AgentError as ComputeError

        with agent_lock(state_dir):
            try:
                with contextlib.suppress(KeyboardInterrupt):
                    asyncio.run(
                        _run_agent(
                            node,
                            address,
                            heartbeat_interval,
                            lease_duration,
                            kubeconfig,
                            context,
                            _compute_agent(node, state_dir),
                        )
                    )
            except ComputeError as exc:
                log.error("%s", exc)
                raise CliError(f"error: {exc}") from None
        return
    if len(chosen) != 1:
        raise click.UsageError(
            "give one of --device, --directory or --loop-file (the storage node's device), or --compute "
            "for a compute node"
        )
    kind_name, path = chosen[0]
    if size is not None and loop_file is None:
        raise click.UsageError("--size is only for --loop-file")
    if pool_dir is not None and directory is not None:
        raise click.UsageError("--pool-dir is for --device and --loop-file (a --directory is the pool)")
    path = Path(os.path.abspath(path))
    state_dir = Path(os.path.abspath(state_dir))
    kind = {"device": "block", "directory": "directory", "loop-file": "loop"}[kind_name]
    config = DeviceConfig(
        kind=kind,  # type: ignore[arg-type]
        path=path,
        pool_dir=path if kind == "directory" else Path(os.path.abspath(pool_dir or state_dir / "pool")),
        state_dir=state_dir,
        size=_size(size, "--size"),
        capacity=_size(capacity, "--capacity"),
    )
    setup_client_logging(log_level, log_format)
    from slurmlink.agent.storage_agent import AgentError

    with agent_lock(state_dir):
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(
                    _run_agent(
                        node,
                        address,
                        heartbeat_interval,
                        lease_duration,
                        kubeconfig,
                        context,
                        _storage_agent(config, node),
                    )
                )
        except AgentError as exc:
            log.error("%s", exc)
            raise CliError(f"error: {exc}") from None
