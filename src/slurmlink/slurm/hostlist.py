"""Slurm's compressed host lists (``compute[1-3,7],login1``) expanded into node names, without a process.

``scontrol show hostnames`` does the same but costs a process per list, and partition discovery reads one
list per partition on every refresh.
"""

from __future__ import annotations

import itertools
import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
#: Far more than any real list; guards against a typo such as ``n[1-99999999]`` eating memory.
MAX_HOSTS = 100_000


class HostlistError(ValueError):
    """Not a host list Slurm would print."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in host list {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise HostlistError(f"unbalanced '[' in host list {text!r}")
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _expand_ranges(body: str, text: str) -> list[str]:
    values: list[str] = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise HostlistError(f"{item!r} in host list {text!r} is not a number or range")
        start, end = match.group(1), match.group(2) or match.group(1)
        width = len(start)  # "01-10" keeps its zero padding
        if int(end) < int(start):
            raise HostlistError(f"range {item!r} in host list {text!r} runs backwards")
        if int(end) - int(start) >= MAX_HOSTS:
            raise HostlistError(f"range {item!r} in host list {text!r} is too large")
        values += [str(number).zfill(width) for number in range(int(start), int(end) + 1)]
    return values


def _expand_one(pattern: str, text: str) -> list[str]:
    pieces = re.split(r"(\[[^\]]*\])", pattern)
    choices = [
        _expand_ranges(piece[1:-1], text) if piece.startswith("[") else [piece] for piece in pieces if piece
    ]
    names = ["".join(combination) for combination in itertools.product(*choices)]
    if len(names) > MAX_HOSTS:
        raise HostlistError(f"host list {text!r} names more than {MAX_HOSTS} hosts")
    return names


def expand_hostlist(text: str) -> list[str]:
    """The node names of a host list, in order; ``(null)`` and the empty string name none."""
    value = text.strip()
    if value in ("", "(null)"):
        return []
    names: list[str] = []
    for part in _split_top_level(value):
        names += _expand_one(part, value)
        if len(names) > MAX_HOSTS:
            raise HostlistError(f"host list {value!r} names more than {MAX_HOSTS} hosts")
    return names
