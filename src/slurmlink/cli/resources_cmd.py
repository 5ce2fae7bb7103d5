"""``slurmlink get|describe|watch``: read resources from a slurmlink API, kubectl-style, with rich tables.

Also the plumbing every client-side command shares (``--kubeconfig``/``--context``, kind lookup,
kubectl-worded errors). Heavy modules (rich, the HTTP client, the kind catalog) are imported when a
command runs, so ``slurmlink --help`` and the other commands stay quick to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from slurmlink.config import default_state_dir
from slurmlink.resources.errors import ApiError

if TYPE_CHECKING:
    from slurmlink.client.http import HttpClient
    from slurmlink.resources.kind import Kind, Obj
    from slurmlink.resources.registry import Registry

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])


# ---- shared plumbing -----------------------------------------------------------------------------


class CliError(click.ClickException):
    """A failure printed as kubectl does (``error: ...`` or ``Error from server (...)``), exit 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, err=True)


def error_text(exc: ApiError) -> str:
    """kubectl's wording: ``Error from server (Reason): message``; ``error: ...`` when unreachable."""
    from slurmlink.client.http import UnreachableError

    if isinstance(exc, UnreachableError):
        return f"error: {exc.message}"
    return f"Error from server ({exc.reason}): {exc.message}"


def default_kubeconfig() -> Path:
    """``$KUBECONFIG`` (its first existing entry), else ``admin.kubeconfig`` in the server state dir.

    The state dir is ``$SLURMLINK_STATE_DIR``, else ``~/.local/state/slurmlink`` (as for serve).
    """
    env = os.environ.get("KUBECONFIG", "")
    entries = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    for entry in entries:
        if entry.exists():
            return entry
    if entries:
        return entries[0]
    state = os.environ.get("SLURMLINK_STATE_DIR")
    return (Path(state).expanduser() if state else default_state_dir()) / "admin.kubeconfig"


def kubeconfig_options(func: _F) -> _F:
    """``--kubeconfig`` and ``--context``, shared by every command that talks to the API."""
    func = click.option(
        "--context", default=None, help="kubeconfig context to use (default: its current-context)."
    )(func)
    func = click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help="kubeconfig of the slurmlink API (default: $KUBECONFIG, else "
        "~/.local/state/slurmlink/admin.kubeconfig, which `slurmlink serve` writes).",
    )(func)
    return func


def log_options(func: _F) -> _F:
    """``--log-level`` and ``--log-format``, shared by the long-running API clients (controller, gateway)."""
    func = click.option(
        "--log-format",
        type=click.Choice(["json", "console"]),
        default="json",
        show_default=True,
        envvar="SLURMLINK_LOG_FORMAT",
    )(func)
    func = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        envvar="SLURMLINK_LOG_LEVEL",
    )(func)
    return func


def setup_client_logging(level: str, fmt: str) -> None:
    """Configure logging; below debug, one line per API request from httpx would only be noise."""
    import logging

    from slurmlink import logs

    logs.setup(level, fmt)
    if level != "debug":
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def open_client(kubeconfig: Path | None, context: str | None, **kwargs: Any) -> HttpClient:
    """An ``HttpClient`` from the kubeconfig, or a CliError saying what is wrong with the file."""
    from slurmlink.auth.kubeconfig import KubeconfigError
    from slurmlink.client.http import HttpClient

    path = kubeconfig or default_kubeconfig()
    if not path.exists():
        hint = "" if kubeconfig else "; pass --kubeconfig or set $KUBECONFIG"
        raise CliError(f"error: kubeconfig {path} does not exist{hint}")
    try:
        return HttpClient.from_kubeconfig(path, context, **kwargs)
    except (KubeconfigError, ValueError, OSError) as exc:
        raise CliError(f"error: {exc}") from exc


def resolve_kind(text: str, registry: Registry | None = None) -> Kind:
    """A kind by plural, singular, kind name or short name (any case), optionally ``.group``-qualified."""
    if registry is None:
        from slurmlink.resources.catalog import default_registry

        registry = default_registry()
    wanted = text.strip().lower()
    name, _, group = wanted.partition(".")
    for kind in registry.kinds():
        names = {kind.plural, kind.singular, kind.kind.lower(), *kind.short_names}
        if group:
            if name in names and kind.group.lower() == group:
                return kind
        elif wanted in names:
            return kind
    raise CliError(f'error: the server doesn\'t have a resource type "{text}"')


def qualified(kind: Kind) -> str:
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def run_with_client(
    kubeconfig: Path | None, context: str | None, body: Callable[[HttpClient], Awaitable[T]]
) -> T:
    """Open a client, run ``body``, turn API failures into kubectl-style errors."""

    async def main() -> T:
        client = open_client(kubeconfig, context)
        try:
            return await body(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except ApiError as exc:
        raise CliError(error_text(exc)) from exc


def _namespace_options(func: _F) -> _F:
    func = click.option(
        "-A",
        "--all-namespaces",
        is_flag=True,
        help="List across all namespaces (adds a NAMESPACE column).",
    )(func)
    func = click.option(
        "-n",
        "--namespace",
        default=None,
        help="Namespace (default: the kubeconfig context's namespace, else 'default').",
    )(func)
    return func


def _scope(kind: Kind, client: HttpClient, namespace: str | None, all_namespaces: bool) -> str | None:
    """The namespace to address: None for cluster-scoped kinds and for -A."""
    if not kind.namespaced or all_namespaces:
        return None
    return namespace or client.namespace or "default"


def _sort_key(obj: Obj) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


# ---- get ---------------------------------------------------------------------------------------


@click.command("get")
@click.argument("kind_name", metavar="KIND")
@click.argument("name", required=False)
@_namespace_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["wide", "yaml", "json", "name"]),
    default=None,
    help="wide: all printer columns; yaml/json: the objects; name: KIND/NAME lines.",
)
@kubeconfig_options
def get(
    kind_name: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    output: str | None,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """List objects of KIND, or show the object NAME, as a table (columns from the kind's printer columns).

    KIND is a plural, singular or kind name (any case) or a short name, optionally qualified by its
    group (e.g. workflows, Workflow, workflows.dataworkflowservices.github.io, computes, ns).
    """
    kind = resolve_kind(kind_name)
    if name and all_namespaces:
        raise CliError("error: a resource cannot be retrieved by name across all namespaces")

    async def body(client: HttpClient) -> tuple[list[Obj], str | None]:
        ns = _scope(kind, client, namespace, all_namespaces)
        if name:
            return [await client.get(kind, ns, name)], ns
        items, _ = await client.list(kind, ns)
        return items, ns

    objs, ns = run_with_client(kubeconfig, context, body)
    from slurmlink.cli import output as render

    objs.sort(key=_sort_key)
    if output in ("yaml", "json"):
        doc: Any = (
            objs[0]
            if name
            else {"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
        )
        click.echo(render.dump(doc, output))
        return
    if output == "name":
        for obj in objs:
            click.echo(f"{qualified(kind)}/{obj['metadata']['name']}")
        return
    if not objs:
        click.echo(f"No resources found{f' in {ns} namespace' if ns else ''}.", err=True)
        return
    headers, cells = render.rows(kind, objs, output == "wide")
    if all_namespaces and kind.namespaced:
        headers = ["NAMESPACE", *headers]
        cells = [[o["metadata"].get("namespace") or "", *r] for o, r in zip(objs, cells, strict=True)]
    render.print_table(render.Out(), headers, cells)


# ---- describe ----------------------------------------------------------------------------------


@click.command("describe")
@click.argument("kind_name", metavar="KIND")
@click.argument("name")
@click.option(
    "-n",
    "--namespace",
    default=None,
    help="Namespace (default: the kubeconfig context's namespace, else 'default').",
)
@kubeconfig_options
def describe(
    kind_name: str, name: str, namespace: str | None, kubeconfig: Path | None, context: str | None
) -> None:
    """Show one object in detail: metadata, spec and status, and for Workflows a table of drivers.

    KIND is a plural, singular or kind name (any case) or a short name, optionally qualified by its
    group (e.g. workflow, Workflow, workflows.dataworkflowservices.github.io).
    """
    kind = resolve_kind(kind_name)

    async def body(client: HttpClient) -> Obj:
        return await client.get(kind, _scope(kind, client, namespace, False), name)

    obj = run_with_client(kubeconfig, context, body)
    from slurmlink.cli import output as render

    render.describe(render.Out(), kind, obj)


# ---- watch -------------------------------------------------------------------------------------


@click.command("watch")
@click.argument("kind_name", metavar="KIND")
@_namespace_options
@kubeconfig_options
def watch(
    kind_name: str,
    namespace: str | None,
    all_namespaces: bool,
    kubeconfig: Path | None,
    context: str | None,
) -> None:
    """Print one line per change of KIND's objects (existing ones first, as ADDED) until Ctrl-C.

    Each line has the event type (ADDED, MODIFIED, DELETED), the object's name and the kind's
    state columns. A watch the server ends is resumed from the last seen version.
    """
    from slurmlink.cli import output as render

    kind = resolve_kind(kind_name)
    out = render.Out()

    async def body(client: HttpClient) -> None:
        ns = _scope(kind, client, namespace, all_namespaces)
        show_ns = kind.namespaced and ns is None

        def line(event_type: str, obj: Obj) -> list[str]:
            _, cells = render.rows(kind, [obj], False)
            where = [obj["metadata"].get("namespace") or ""] if show_ns else []
            return [event_type, *where, *cells[0]]

        items, resource_version = await client.list(kind, ns)
        existing = [line("ADDED", o) for o in sorted(items, key=_sort_key)]
        headers, _ = render.rows(kind, [], False)
        printer = render.LinePrinter(out, ["EVENT", *(["NAMESPACE"] if show_ns else []), *headers], existing)
        for row in existing:
            printer.event(row)
        while True:  # a watch the server closes is resumed where it ended
            events = await client.watch(kind, ns, resource_version)
            async for event in events:
                if event.type == "ERROR":
                    status = event.object
                    raise ApiError(
                        int(status.get("code") or 500),
                        str(status.get("reason") or "InternalError"),
                        str(status.get("message") or "the watch failed"),
                    )
                rv = (event.object.get("metadata") or {}).get("resourceVersion")
                resource_version = str(rv) if rv else resource_version
                if event.type != "BOOKMARK":
                    printer.event(line(event.type, event.object))

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        run_with_client(kubeconfig, context, body)
