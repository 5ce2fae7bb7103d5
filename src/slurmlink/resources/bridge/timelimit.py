"""Time limits as Slurm's ``--time`` takes them, or as a number of minutes, read into whole minutes.

Slurm accepts ``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``, ``days-hours``,
``days-hours:minutes`` and ``days-hours:minutes:seconds``, and ``UNLIMITED``/``INFINITE``; seconds
round up to a whole minute, as Slurm rounds them. Short unit forms (``90m``, ``2h``, ``1d12h``,
``1h30m``) are accepted too, since that is how people write durations elsewhere. A limit of zero is
refused rather than passed on: Slurm reads ``--time=0`` as "no limit", the seed's unlimited-as-zero
confusion all over again; write ``UNLIMITED`` for that. ``None`` is the unlimited value everywhere.
"""

from __future__ import annotations

import math
import re

from slurmlink.slurm.limits import parse_minutes

UNLIMITED = frozenset({"UNLIMITED", "INFINITE"})

_CLOCK = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_UNITS = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")

HINT = (
    "a time limit is a number of minutes or Slurm's MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS "
    "(or 90m, 2h, 1d12h), or UNLIMITED"
)


ZERO = "a time limit of zero means no limit to Slurm: write UNLIMITED for that"


class TimeLimitError(ValueError):
    """Not a time limit Slurm would accept."""


def _check_clock(m: re.Match[str]) -> None:
    """The ranges Slurm's own parser leaves unchecked: a user's ``1-25:00`` is a typo, not 2 days."""
    days, b, c = m["days"], m["b"], m["c"]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        if int(m["a"]) > 23 or int(b or 0) > 59 or int(c or 0) > 59:
            raise TimeLimitError("hours must be below 24 and minutes and seconds below 60 after a day count")
    elif c is not None:  # HH:MM:SS
        if int(b or 0) > 59 or int(c) > 59:
            raise TimeLimitError("minutes and seconds must be below 60 in HH:MM:SS")
    elif b is not None and int(b) > 59:  # MM:SS
        raise TimeLimitError("seconds must be below 60 in MM:SS")


def parse_time_limit(value: int | str) -> int | None:
    """Whole minutes of ``value``; None for unlimited. Raises TimeLimitError with the reason."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TimeLimitError(HINT)
    if isinstance(value, int):
        seconds = value * 60
    else:
        text = value.strip()
        if text.upper() in UNLIMITED:
            return None
        clock, units = _CLOCK.match(text), _UNITS.match(text)
        if clock is not None:
            _check_clock(clock)
            minutes = parse_minutes(text)  # Slurm's arithmetic: seconds round up to a minute
            if not minutes:
                raise TimeLimitError(ZERO)
            return minutes
        if units is not None and text:
            seconds = (
                (int(units["d"] or 0) * 24 + int(units["h"] or 0)) * 60 + int(units["m"] or 0)
            ) * 60 + int(units["s"] or 0)
        else:
            raise TimeLimitError(HINT)
    if seconds < 0:
        raise TimeLimitError("a time limit cannot be negative")
    if seconds == 0:
        raise TimeLimitError(ZERO)
    return math.ceil(seconds / 60)


def format_minutes(minutes: int | None) -> str:
    """Minutes as Slurm prints a limit: ``30:00``, ``2:00:00``, ``1-12:00:00``, ``UNLIMITED``."""
    if minutes is None:
        return "UNLIMITED"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    if hours:
        return f"{hours}:{mins:02d}:00"
    return f"{mins}:00"
