"""``slurmlink storage drain|undrain|list``: an admin's view of the storage nodes.

Draining sets the node's ``Storage`` ``spec.state`` to ``Disabled`` (nothing new is placed on it;
what it holds stays), undraining back to ``Enabled``; the node's agent then reports ``status.status``
``Disabled`` or ``Ready``. The agent never changes ``spec.state`` itself.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from slurmlink.cli.resources_cmd import CliError, kubeconfig_options, run_with_client
from slurmlink.resources.errors import ApiError

if TYPE_CHECKING:
    from slurmlink.client.http import HttpClient
    from slurmlink.resources.kind import Obj


def human_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps a number of at least 1, one decimal (``3.9GiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f}{unit}" if unit == "B" or value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


@click.group("storage")
def storage() -> None:
    """Storage nodes: list them, drain one (nothing new is placed on it), undrain it.

    Each storage node's agent ('slurmlink agent') registers a DWS Storage named after the node in
    namespace default; 'kubectl get storages -A' shows the same objects.
    """


async def _storage(client: HttpClient, node: str) -> Obj:
    from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE

    try:
        return await client.get(STORAGE, STORAGE_NAMESPACE, node)
    except ApiError as exc:
        if exc.code != 404:
            raise
        items, _ = await client.list(STORAGE, STORAGE_NAMESPACE)
        known = ", ".join(sorted(o["metadata"]["name"] for o in items)) or "none"
        raise CliError(
            f'error: no storage node "{node}" (no Storage {STORAGE_NAMESPACE}/{node}; known: {known})'
        ) from None


def _set_state(
    node: str, state: str, reason: str | None, kubeconfig: Path | None, context: str | None
) -> None:
    from slurmlink.resources.dws.storage import DRAIN_REASON_ANNOTATION, STORAGE, STORAGE_NAMESPACE

    async def body(client: HttpClient) -> tuple[str, Obj]:
        current = await _storage(client, node)
        before = str((current.get("spec") or {}).get("state") or "Enabled")
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        patch: dict[str, Any] = {}
        if before != state:
            patch["spec"] = {"state": state}
        if state == "Disabled" and reason is not None and annotations.get(DRAIN_REASON_ANNOTATION) != reason:
            patch["metadata"] = {"annotations": {DRAIN_REASON_ANNOTATION: reason}}
        if state == "Enabled" and DRAIN_REASON_ANNOTATION in annotations:
            patch["metadata"] = {"annotations": {DRAIN_REASON_ANNOTATION: None}}  # merge patch: remove
        if patch:
            current = await client.patch(STORAGE, STORAGE_NAMESPACE, node, patch)
        return before, current

    before, after = run_with_client(kubeconfig, context, body)
    status = (after.get("status") or {}).get("status") or "Unknown"
    verb = "drained" if state == "Disabled" else "undrained"
    if before == state:
        click.echo(f"storage/{node}: spec.state already {state} (status {status}); nothing changed")
        return
    effect = "nothing new is placed on it" if state == "Disabled" else "new allocations may go there again"
    click.echo(f"storage/{node} {verb}: spec.state {before} -> {state} ({effect}; status {status})")


@storage.command()
@click.argument("node")
@click.option("--reason", help="Why (kept in the annotation slurmlink.io/drain-reason, shown in the status).")
@kubeconfig_options
def drain(node: str, reason: str | None, kubeconfig: Path | None, context: str | None) -> None:
    """Drain storage node NODE: set its Storage's spec.state to Disabled."""
    _set_state(node, "Disabled", reason, kubeconfig, context)


@storage.command()
@click.argument("node")
@kubeconfig_options
def undrain(node: str, kubeconfig: Path | None, context: str | None) -> None:
    """Undrain storage node NODE: set its Storage's spec.state back to Enabled."""
    _set_state(node, "Enabled", None, kubeconfig, context)


def _heartbeat_age(lease: Obj | None, now: dt.datetime) -> str:
    from slurmlink.resources.meta import human_duration, parse_time

    renewed = ((lease or {}).get("spec") or {}).get("renewTime")
    if not renewed:
        return "-"
    try:
        return human_duration((now - parse_time(str(renewed))).total_seconds()) + " ago"
    except ValueError:
        return str(renewed)


@storage.command("list")
@kubeconfig_options
def list_(kubeconfig: Path | None, context: str | None) -> None:
    """List the storage nodes: state (drained or not), status, capacity, address, last heartbeat."""
    from slurmlink.resources.coordination import LEASE, NODE_LEASE_NAMESPACE
    from slurmlink.resources.dws.storage import ADDRESS_ANNOTATION, STORAGE, STORAGE_NAMESPACE

    async def body(client: HttpClient) -> tuple[list[Obj], dict[str, Obj]]:
        items, _ = await client.list(STORAGE, STORAGE_NAMESPACE)
        try:
            leases, _ = await client.list(LEASE, NODE_LEASE_NAMESPACE)
        except ApiError as exc:
            if exc.code != 403:
                raise
            leases = []
        return items, {lease["metadata"]["name"]: lease for lease in leases}

    items, leases = run_with_client(kubeconfig, context, body)
    if not items:
        click.echo(f"No storage nodes (no Storage objects in namespace {STORAGE_NAMESPACE}).", err=True)
        return
    from slurmlink.cli import output as render

    now = dt.datetime.now(dt.UTC)
    rows = []
    for obj in sorted(items, key=lambda o: o["metadata"]["name"]):
        name = obj["metadata"]["name"]
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        capacity = status.get("capacity")
        rows.append(
            [
                name,
                str(spec.get("state") or ""),
                str(status.get("status") or ""),
                human_size(capacity) if isinstance(capacity, int) else "",
                str(((obj["metadata"].get("annotations") or {}).get(ADDRESS_ANNOTATION)) or ""),
                _heartbeat_age(leases.get(name), now),
                str(status.get("message") or ""),
            ]
        )
    headers = ["NAME", "STATE", "STATUS", "CAPACITY", "ADDRESS", "HEARTBEAT", "MESSAGE"]
    render.print_table(render.Out(), headers, rows)
