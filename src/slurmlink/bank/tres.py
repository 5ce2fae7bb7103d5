"""Slurm's resource texts, read the way Slurm reads them, so the bank prices what Slurm allocates.

Covers allocated TRES (``cpu=4,mem=8G,node=1,billing=4,gres/gpu=2``, as sacct's AllocTRES and
``tres_fmt_alloc_str`` print it), partition ``TRESBillingWeights`` and the billing value Slurm derives
from them (slurm.conf(5), ``PriorityFlags=MAX_TRES``), the GRES of ``tres_per_*`` requests, job array
index expressions and time limits. Counts are :class:`~decimal.Decimal`; memory and burst buffers are
in MiB, Slurm's base unit for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final

from slurmlink.slurm.limits import LimitError, parse_minutes

__all__ = [
    "INFINITE",
    "NODE_TRES",
    "TresError",
    "array_task_count",
    "billing_value",
    "format_time_limit",
    "gres_counts",
    "parse_billing_weights",
    "parse_time_limit",
    "parse_tres",
    "slurm_billing",
    "tres_name",
]

#: Slurm's INFINITE (``0xffffffff``): the time limit of ``UNLIMITED``/``INFINITE``, in minutes.
INFINITE: Final = 0xFFFFFFFF

#: TRES that live on a node: with MAX_TRES, Slurm bills the largest of these (and each ``gres/…``).
NODE_TRES: Final = frozenset({"cpu", "mem", "node"})

#: Unit letters in Slurm's order; a letter's position is its power of 1024 over no unit.
_UNITS: Final = "KMGTP"
#: TRES whose base unit is the megabyte (``slurmdb_get_tres_base_unit``); others count plain units.
_MEGA_BASE: Final = frozenset({"mem", "bb"})

_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([A-Za-z]?)$")
_ARRAY_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


class TresError(ValueError):
    """A Slurm resource text that does not parse; the message names the part and the accepted form."""


def tres_name(text: str) -> str:
    """The canonical name of a TRES: lower case (Slurm compares TRES names without case)."""
    name = text.strip().lower()
    if not name or "=" in name or "," in name:
        raise TresError(f"{text!r} is not a TRES name; write e.g. cpu, mem, node or gres/gpu")
    return name


def _unit_power(unit: str, name: str) -> int:
    """The power of 1024 a unit letter scales a value of TRES ``name`` by, relative to its base unit."""
    if not unit:
        return 0
    index = _UNITS.find(unit.upper())
    if index < 0:
        raise TresError(f"unit {unit!r} of {name} is not one of {', '.join(_UNITS)}")
    base = 2 if _type_of(name) in _MEGA_BASE else 0
    return index + 1 - base


def _type_of(name: str) -> str:
    return name.split("/", 1)[0]


def _number(text: str, what: str) -> tuple[Decimal, str]:
    match = _NUMBER.match(text.strip())
    if not match:
        raise TresError(f"{what}: {text!r} is not a non-negative number with an optional K/M/G/T/P unit")
    try:
        return Decimal(match.group(1)), match.group(2)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only valid numbers
        raise TresError(f"{what}: {text!r} is not a number") from exc


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    seen: set[str] = set()
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise TresError(f"{what}: {item.strip()!r} is not NAME=VALUE")
        key = tres_name(name)
        if key in seen:
            raise TresError(f"{what}: {key} is given twice")
        seen.add(key)
        pairs.append((key, value.strip()))
    return pairs


def parse_tres(text: str | None) -> dict[str, Decimal]:
    """Allocated TRES by canonical name: ``mem=8G`` gives ``{"mem": 8192}`` (MiB), ``gres/gpu=2`` stays 2.

    Memory and burst buffer values are MiB whatever unit Slurm printed them in (``K``/``M``/``G``/``T``/
    ``P``, powers of 1024); fs and ic, which Slurm counts in bytes, become bytes. Empty text is no TRES.
    """
    counts: dict[str, Decimal] = {}
    for name, value in _pairs(text or "", "TRES"):
        number, unit = _number(value, name)
        counts[name] = number * Decimal(1024) ** _unit_power(unit, name)
    return counts


def parse_billing_weights(text: str | None) -> dict[str, Decimal]:
    """``TRESBillingWeights`` as weight per base unit: ``Mem=0.25G`` is 0.25 per GiB, so 0.25/1024 per MiB.

    As Slurm does, names are compared without case and a unit letter divides the weight by the unit's
    size in the TRES's base unit (MiB for mem and bb); a unit at or below the base unit (``Mem=1M``,
    ``Mem=1K``) leaves the weight as written.
    """
    weights: dict[str, Decimal] = {}
    for name, value in _pairs(text or "", "TRESBillingWeights"):
        number, unit = _number(value, name)
        power = _unit_power(unit, name)
        weights[name] = number / Decimal(1024) ** power if power > 0 else number
    return weights


def billing_value(
    tres: Mapping[str, Decimal | int], weights: Mapping[str, Decimal] | None, *, max_tres: bool = False
) -> Decimal:
    """Slurm's weighted TRES before it truncates it into the ``billing`` TRES.

    Without weights Slurm bills the CPU count. With weights it sums weight x count over every TRES but
    ``billing``; with ``max_tres`` (``PriorityFlags=MAX_TRES``) the node TRES (cpu, mem, node, every
    gres) contribute only their largest weighted value, and the global ones (licenses, bb, …) are added.
    """
    if not weights:
        return Decimal(tres.get("cpu", 0))
    node_part = Decimal(0)
    global_part = Decimal(0)
    for name, count in tres.items():
        if name == "billing":
            continue
        weighted = Decimal(count) * weights.get(name, Decimal(0))
        if max_tres and (name in NODE_TRES or _type_of(name) == "gres"):
            node_part = max(node_part, weighted)
        else:
            global_part += weighted
    return node_part + global_part


def slurm_billing(
    tres: Mapping[str, Decimal | int], weights: Mapping[str, Decimal] | None, *, max_tres: bool = False
) -> int:
    """The ``billing`` TRES Slurm records for an allocation: the weighted value, truncated."""
    return int(billing_value(tres, weights, max_tres=max_tres))


def gres_counts(text: str | None) -> dict[str, int]:
    """GRES counts of a ``tres_per_job/node/task`` request, as TRES names.

    ``gres:gpu:2`` (Slurm 22.05) and ``gres/gpu:2`` (later releases) give ``{"gres/gpu": 2}``; a typed
    request ``gres:gpu:a100:2`` also gives ``gres/gpu:a100``, as Slurm's accounting records both. A GRES
    without a count counts one.
    """
    counts: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = re.split(r"[:/]", item)
        if parts[0].lower() != "gres":
            parts = ["gres", *parts]
        if len(parts) < 2 or not parts[1]:
            raise TresError(f"GRES request {item!r} names no GRES; write e.g. gres:gpu:2")
        count = 1
        if len(parts) > 2 and parts[-1].isdigit():
            count = int(parts.pop())
        if len(parts) > 3 or not all(parts):
            raise TresError(f"GRES request {item!r} is not gres:NAME[:TYPE][:COUNT]")
        name = parts[1].lower()
        counts[f"gres/{name}"] = counts.get(f"gres/{name}", 0) + count
        if len(parts) == 3:
            typed = f"gres/{name}:{parts[2].lower()}"
            counts[typed] = counts.get(typed, 0) + count
    return counts


def array_task_count(array_inx: str | None) -> int:
    """How many tasks a job array index expression makes; no expression is one job.

    ``1-100:2%5`` is 50 (``%`` only throttles how many run at once), ``1,3,5-7`` is 5; an index listed
    twice counts once, as Slurm keeps the indexes in a bitmap.
    """
    if array_inx is None or not array_inx.strip():
        return 1
    expression = array_inx.strip()
    if "%" in expression:
        expression, _, throttle = expression.partition("%")
        if not throttle.isdigit():
            raise TresError(f"array throttle in {array_inx!r} is not a whole number after %")
    indexes: set[int] = set()
    for item in expression.split(","):
        match = _ARRAY_ITEM.match(item.strip())
        if not match:
            raise TresError(
                f"array index {item.strip()!r} in {array_inx!r} is not N, N-M or N-M:STEP; e.g. 1-100:2%5"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1:
            raise TresError(f"array range {item.strip()!r} in {array_inx!r} runs backwards or has step 0")
        indexes.update(range(first, last + 1, step))
    return len(indexes)


def parse_time_limit(value: str | int) -> int:
    """A Slurm time limit in whole minutes; :data:`INFINITE` for ``UNLIMITED``, ``INFINITE`` or ``-1``.

    Accepts what ``--time`` and slurm.conf accept: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``, and a whole number of minutes. Seconds round up to the next minute, as
    Slurm rounds them.
    """
    if isinstance(value, bool):
        raise TresError(f"time limit {value!r} is not a time; write minutes or D-HH:MM:SS")
    if isinstance(value, int):
        if value == -1 or value == INFINITE:
            return INFINITE
        if value < 0:
            raise TresError(f"time limit {value} is negative; write minutes, D-HH:MM:SS or UNLIMITED")
        return value
    try:
        minutes = parse_minutes(value)
    except LimitError as exc:
        raise TresError(f"time limit {exc}") from None
    return INFINITE if minutes is None else minutes


def format_time_limit(minutes: int) -> str | int:
    """The form a time limit is stored in: minutes, or ``"UNLIMITED"``."""
    return "UNLIMITED" if minutes == INFINITE else minutes
