"""How Slurm writes limits (times, memory sizes, counts), read into numbers with None for "no limit".

Slurm spells "no limit" several ways: ``UNLIMITED`` and ``INFINITE`` (times, node counts), ``NONE`` (a
partition's DefaultTime), ``-1`` (REST), and, for memory, 0 in slurm.conf or a huge number: Slurm 22.05
reads ``MaxMemPerNode=UNLIMITED`` in slurm.conf as its 64-bit infinity and, since the top bit marks a
per-CPU value, ``scontrol`` then shows ``MaxMemPerCPU=9223372036854775807``. Every such spelling becomes
None here, never 0 or NaN: the WLM operator's labels broke on exactly that (``wall-time=0``, ``nan``).
"""

from __future__ import annotations

import re

#: Spellings of "no limit" in Slurm's output and input (compared upper-case).
UNLIMITED_WORDS = frozenset({"UNLIMITED", "INFINITE", "NONE", "-1"})
#: Anything this large is one of Slurm's infinity markers (INFINITE, INFINITE64, NO_VAL, NO_VAL64, with or
#: without the per-CPU bit), never a real limit.
_INFINITY_FLOOR = 0xFFFFFFFE
_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?$")
_CLOCK = re.compile(r"^(\d+)(?::(\d+)(?::(\d+))?)?$")
_MEMORY = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_MEMORY_FACTORS = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


class LimitError(ValueError):
    """A value that is not a limit of the expected kind; the message says what is accepted."""


def is_unlimited(text: str) -> bool:
    return text.strip().upper() in UNLIMITED_WORDS


def parse_seconds(text: str) -> int | None:
    """A Slurm time in seconds, None for no limit.

    Accepts what ``--time`` and slurm.conf accept and what ``squeue``/``scontrol`` print (limits and run
    times alike): ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.
    """
    value = text.strip()
    if is_unlimited(value):
        return None
    days = hours = minutes = seconds = 0
    if match := _DAYS.match(value):
        days, hours = int(match.group(1)), int(match.group(2))
        minutes, seconds = int(match.group(3) or 0), int(match.group(4) or 0)
    elif match := _CLOCK.match(value):
        fields = [int(part) for part in match.groups() if part is not None]
        if len(fields) == 3:
            hours, minutes, seconds = fields
        else:
            minutes, seconds = fields[0], fields[1] if len(fields) == 2 else 0
    else:
        raise LimitError(
            f"{text!r} is not a Slurm time: write minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] or UNLIMITED"
        )
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return None if -(-total // 60) >= _INFINITY_FLOOR else total


def parse_minutes(text: str) -> int | None:
    """A Slurm time (any form :func:`parse_seconds` reads) in whole minutes, None for no limit; seconds
    round up to the next minute, as Slurm rounds them."""
    seconds = parse_seconds(text)
    return None if seconds is None else -(-seconds // 60)


def format_minutes(minutes: int | None) -> str:
    """How slurm.conf takes a time: whole minutes, or ``UNLIMITED``."""
    return "UNLIMITED" if minutes is None else str(minutes)


def parse_memory_mib(text: str) -> int | None:
    """A memory size in MiB (Slurm's "MB"), None for no limit; a bare number is MiB, as in slurm.conf.

    Suffixes K, M, G, T (optionally followed by B or iB) are binary, as Slurm reads them; a size
    rounds up to a whole MiB.
    """
    value = text.strip()
    if is_unlimited(value):
        return None
    match = _MEMORY.match(value)
    if not match:
        raise LimitError(f"{text!r} is not a memory size: write MiB, or a number with K, M, G or T")
    number, unit = int(match.group(1)), match.group(2).upper()
    if number >= _INFINITY_FLOOR:
        return None
    mib = number * _MEMORY_FACTORS[unit]
    return int(-(-mib // 1))


def parse_count(text: str) -> int | None:
    """A count limit (MaxNodes, MaxCPUsPerNode), None for no limit."""
    value = text.strip()
    if is_unlimited(value):
        return None
    if not value.isdigit():
        raise LimitError(f"{text!r} is not a count: write a whole number or UNLIMITED")
    number = int(value)
    return None if number >= _INFINITY_FLOOR else number
