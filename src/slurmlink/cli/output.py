"""Rendering for ``slurmlink get|describe|watch``: rich tables, describe pages, watch lines, YAML/JSON.

Imported only when one of those commands runs (rich and the kind catalog are not needed for
``--help`` or the other commands).
"""

from __future__ import annotations

import json
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from slurmlink.api import tables
from slurmlink.resources.kind import Kind, Obj

EVENT_STYLES = {"ADDED": "green", "MODIFIED": "yellow", "DELETED": "red", "ERROR": "bold red"}


class Out:
    """stdout through rich. Not a terminal: wide enough that rows never wrap, no trailing blanks."""

    def __init__(self) -> None:
        console = Console(highlight=False)
        self.terminal = console.is_terminal
        self.console = console if self.terminal else Console(highlight=False, width=1000)

    def print(self, renderable: Any) -> None:
        if self.terminal:
            self.console.print(renderable)
            return
        with self.console.capture() as captured:
            self.console.print(renderable)
        for line in captured.get().splitlines():
            click.echo(line.rstrip())


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rows(kind: Kind, objs: list[Obj], wide: bool) -> tuple[list[str], list[list[str]]]:
    """Column headers and cells as ``kubectl get`` shows them (the server's Table logic)."""
    rendered = tables.table(kind, objs, None, include_object="None")
    defs = rendered["columnDefinitions"]
    keep = [i for i, d in enumerate(defs) if wide or not d.get("priority")]
    headers = [str(defs[i]["name"]).upper() for i in keep]
    cells = [[cell(row["cells"][i]) for i in keep] for row in rendered["rows"]]
    return headers, cells


def _plain_table() -> Table:
    return Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 3, 0, 0))


def print_table(out: Out, headers: list[str], body: list[list[str]]) -> None:
    table = _plain_table()
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in body:
        table.add_row(*(Text(c) for c in row))
    out.print(table)


def dump(obj: Any, fmt: str) -> str:
    """``json`` (indented like kubectl) or ``yaml``."""
    if fmt == "json":
        return json.dumps(obj, indent=4, ensure_ascii=False)
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")


# ---- describe ----------------------------------------------------------------------------------


def _kv_grid(pairs: list[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(f"{key}:", Text(value))
    return grid


def _listing(value: Any) -> str:
    if not value:
        return "<none>"
    if isinstance(value, dict):
        return "\n".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _owners(refs: Any) -> str:
    if not refs:
        return "<none>"
    return "\n".join(f"{r.get('kind')}/{r.get('name')} (uid {r.get('uid')})" for r in refs)


def driver_table(drivers: list[dict[str, Any]]) -> Table:
    """A Workflow's ``status.drivers``: one row per (directive, driver, state) registration."""
    table = _plain_table()
    for header in ("DWD INDEX", "DRIVER ID", "WATCH STATE", "STATUS", "COMPLETED", "MESSAGE / ERROR"):
        table.add_column(header, no_wrap=header != "MESSAGE / ERROR", overflow="fold")
    for d in drivers:
        message = str(d.get("message") or "")
        if d.get("error"):
            message = f"{message} (error: {d['error']})" if message else f"error: {d['error']}"
        table.add_row(
            Text(cell(d.get("dwdIndex"))),
            Text(cell(d.get("driverID"))),
            Text(cell(d.get("watchState"))),
            Text(cell(d.get("status"))),
            Text(cell(bool(d.get("completed")))),
            Text(message),
        )
    return table


def _indented(text: str) -> Text:
    return Text("\n".join("  " + line for line in text.splitlines()))


def describe(out: Out, kind: Kind, obj: Obj) -> None:
    """Metadata, then every other top-level section as YAML; Workflows get a driver table."""
    m = obj.get("metadata") or {}
    pairs = [("Name", str(m.get("name", "")))]
    if kind.namespaced:
        pairs.append(("Namespace", str(m.get("namespace", ""))))
    pairs += [
        ("Labels", _listing(m.get("labels"))),
        ("Annotations", _listing(m.get("annotations"))),
        ("API Version", str(obj.get("apiVersion", ""))),
        ("Kind", str(obj.get("kind", kind.kind))),
        ("Finalizers", _listing(m.get("finalizers"))),
        ("Owner References", _owners(m.get("ownerReferences"))),
        ("Creation Timestamp", str(m.get("creationTimestamp", ""))),
    ]
    if m.get("deletionTimestamp"):
        pairs.append(("Deletion Timestamp", str(m["deletionTimestamp"])))
    pairs += [
        ("Generation", cell(m.get("generation"))),
        ("Resource Version", cell(m.get("resourceVersion"))),
        ("UID", cell(m.get("uid"))),
    ]
    out.print(_kv_grid(pairs))
    workflow = kind.kind == "Workflow"
    drivers: list[dict[str, Any]] = []
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if workflow and key == "status" and isinstance(value, dict):
            drivers = list(value.get("drivers") or [])
            value = {k: v for k, v in value.items() if k != "drivers"}
        out.print(Text(f"{key[:1].upper()}{key[1:]}:", style="bold"))
        out.print(_indented("<none>" if value in (None, {}, []) else dump(value, "yaml")))
    if workflow:
        out.print(Text("Drivers:", style="bold"))
        out.print(driver_table(drivers) if drivers else _indented("<none>"))


# ---- watch -------------------------------------------------------------------------------------


class LinePrinter:
    """Aligned lines for a stream of rows; columns start wide enough for ``seed`` rows and only grow."""

    def __init__(self, out: Out, headers: list[str], seed: list[list[str]]) -> None:
        self.out = out
        self.widths = [max([len(h), 8, *(len(r[i]) for r in seed)]) for i, h in enumerate(headers)]
        self._print(headers, "bold")

    def event(self, cells: list[str]) -> None:
        """A row whose first cell is the event type (coloured on a terminal)."""
        self._print(cells, None)

    def _print(self, cells: list[str], style: str | None) -> None:
        line = Text(no_wrap=True, overflow="ignore")
        for i, value in enumerate(cells):
            self.widths[i] = max(self.widths[i], len(value))
            text = value if i == len(cells) - 1 else value.ljust(self.widths[i] + 3)
            line.append(text, style=style or (EVENT_STYLES.get(value) if i == 0 else None))
        self.out.print(line)
