"""``slurmlink buffers list|show|destroy``: the burst buffers that exist, job and persistent.

A buffer is what its ``StorageAllocation`` objects hold: a job buffer's belong to the ``Servers`` of
its directive (``<workflow>-<index>``), a persistent buffer's to its ``PersistentStorageInstance``.
Listing shows what the caller may read (an HPC user's kubeconfig: their own buffers only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from slurmlink.cli.resources_cmd import CliError, kubeconfig_options, run_with_client
from slurmlink.cli.storage_cmd import human_size
from slurmlink.resources.errors import ApiError

if TYPE_CHECKING:
    from slurmlink.client.http import HttpClient
    from slurmlink.resources.kind import Obj

DEFAULT_NAMESPACE = "slurm"


@dataclass
class Buffer:
    name: str
    kind: str  # "job" | "persistent"
    fs_type: str = ""
    user_id: int | None = None
    created: str = ""
    allocations: list[Obj] = field(default_factory=list)
    instance: Obj | None = None

    @property
    def size(self) -> int:
        return sum(int(a["spec"].get("capacity") or 0) for a in self.allocations)

    @property
    def nodes(self) -> list[str]:
        return sorted({str(a["spec"].get("node")) for a in self.allocations})

    @property
    def state(self) -> str:
        if self.instance is not None and self.instance["metadata"].get("deletionTimestamp"):
            return "Destroying"
        states = {(a.get("status") or {}).get("state") or "Pending" for a in self.allocations}
        if any(a["metadata"].get("deletionTimestamp") for a in self.allocations):
            return "Destroying"
        if "Failed" in states:
            return "Failed"
        if states == {"Ready"}:
            return "Ready"
        return "Pending" if self.allocations else "Empty"

    @property
    def users(self) -> list[str]:
        refs = ((self.instance or {}).get("spec") or {}).get("consumerReferences") or []
        return [str(r.get("name")) for r in refs if r.get("kind") == "Workflow"]


async def _buffers(client: HttpClient, namespace: str) -> dict[str, Buffer]:
    from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
    from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION

    allocations, _ = await client.list(STORAGE_ALLOCATION, namespace)
    instances, _ = await client.list(PERSISTENT_STORAGE_INSTANCE, namespace)
    found: dict[str, Buffer] = {}
    for psi in instances:
        spec = psi.get("spec") or {}
        found[psi["metadata"]["name"]] = Buffer(
            psi["metadata"]["name"],
            "persistent",
            str(spec.get("fsType") or ""),
            spec.get("userID"),
            psi["metadata"].get("creationTimestamp", ""),
            instance=psi,
        )
    for alloc in allocations:
        spec = alloc.get("spec") or {}
        owner: dict[str, Any] = next(iter(alloc["metadata"].get("ownerReferences") or []), {})
        name = str(owner.get("name") or (spec.get("source") or {}).get("name") or alloc["metadata"]["name"])
        kind = "persistent" if owner.get("kind") == "PersistentStorageInstance" else "job"
        buffer = found.setdefault(
            name,
            Buffer(
                name,
                kind,
                str(spec.get("fsType") or ""),
                spec.get("userID"),
                alloc["metadata"].get("creationTimestamp", ""),
            ),
        )
        buffer.allocations.append(alloc)
    return found


def _age(created: str, now: dt.datetime) -> str:
    from slurmlink.resources.meta import human_duration, parse_time

    try:
        return human_duration((now - parse_time(created)).total_seconds())
    except ValueError:
        return "-"


@click.group("buffers")
def buffers() -> None:
    """Burst buffers: list them, show one, destroy a persistent one.

    Job buffers live as long as their job (named after the directive: <workflow>-<index>);
    persistent buffers (#DW create_persistent) until destroyed. 'kubectl get storageallocations'
    and 'kubectl get persistentstorageinstances' show the objects behind them.
    """


namespace_option = click.option(
    "-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True, help="The jobs' namespace."
)


@buffers.command("list")
@namespace_option
@kubeconfig_options
def list_(namespace: str, kubeconfig: Path | None, context: str | None) -> None:
    """List the buffers: kind, type, size, storage nodes, owner, state, age."""

    async def body(client: HttpClient) -> dict[str, Buffer]:
        return await _buffers(client, namespace)

    found = run_with_client(kubeconfig, context, body)
    if not found:
        click.echo(f"No burst buffers in namespace {namespace}.", err=True)
        return
    from slurmlink.cli import output as render

    now = dt.datetime.now(dt.UTC)
    rows = [
        [
            b.name,
            b.kind,
            b.fs_type,
            human_size(b.size) if b.allocations else "-",
            ",".join(b.nodes) or "-",
            str(b.user_id if b.user_id is not None else "-"),
            b.state,
            _age(b.created, now),
        ]
        for b in sorted(found.values(), key=lambda b: (b.kind, b.name))
    ]
    render.print_table(render.Out(), ["NAME", "KIND", "TYPE", "SIZE", "NODES", "UID", "STATE", "AGE"], rows)


async def _one(client: HttpClient, namespace: str, name: str) -> Buffer:
    found = await _buffers(client, namespace)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise CliError(f'error: no burst buffer "{name}" in namespace {namespace} (known: {known})')
    return found[name]


@buffers.command()
@click.argument("name")
@namespace_option
@kubeconfig_options
def show(name: str, namespace: str, kubeconfig: Path | None, context: str | None) -> None:
    """Show buffer NAME: its allocations on the storage nodes and the jobs using it."""

    async def body(client: HttpClient) -> Buffer:
        return await _one(client, namespace, name)

    b = run_with_client(kubeconfig, context, body)
    click.echo(f"Name:      {b.name}")
    click.echo(f"Kind:      {b.kind}")
    click.echo(f"Type:      {b.fs_type}")
    click.echo(f"Size:      {human_size(b.size)}")
    click.echo(f"Owner uid: {b.user_id}")
    click.echo(f"State:     {b.state}")
    click.echo(f"Created:   {b.created}")
    if b.kind == "persistent":
        click.echo(f"Used by:   {', '.join(b.users) or '-'}")
    click.echo("Allocations:")
    for a in sorted(b.allocations, key=lambda a: int(a["spec"].get("index") or 0)):
        status = a.get("status") or {}
        message = f"  ({status['message']})" if status.get("message") else ""
        size = human_size(int(a["spec"]["capacity"]))
        state = status.get("state") or "Pending"
        where = f"node={a['spec']['node']}  size={size}  state={state}"
        click.echo(f"  {a['metadata']['name']}  {where}{message}")


@buffers.command()
@click.argument("name")
@namespace_option
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until its storage is freed.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait.")
@kubeconfig_options
def destroy(
    name: str, namespace: str, wait: bool, timeout: float, kubeconfig: Path | None, context: str | None
) -> None:
    """Destroy persistent buffer NAME (refused while a job uses it), freeing its storage."""
    from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE

    async def body(client: HttpClient) -> str:
        b = await _one(client, namespace, name)
        if b.kind != "persistent" or b.instance is None:
            raise CliError(f"error: {name} is a job buffer; it goes away when its job ends")
        if b.users:
            jobs = ", ".join(u[2:] if u.startswith("bb") else u for u in b.users)
            raise CliError(
                f"error: persistent buffer {name} is in use by job(s) {jobs}; "
                "destroy it once they have finished"
            )
        try:
            await client.delete(PERSISTENT_STORAGE_INSTANCE, namespace, name, propagation_policy="Foreground")
        except ApiError as exc:
            if exc.code != 404:
                raise
        if not wait:
            return f"persistent buffer {name}: destruction started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = (await _buffers(client, namespace)).get(name)
            if left is None:
                return (
                    f"persistent buffer {name} destroyed ({human_size(b.size)} freed on {', '.join(b.nodes)})"
                )
            await asyncio.sleep(0.5)
        raise CliError(
            f"error: persistent buffer {name} still exists after {timeout:g} s; "
            f"see 'slurmlink buffers show {name}'"
        )

    click.echo(run_with_client(kubeconfig, context, body))
