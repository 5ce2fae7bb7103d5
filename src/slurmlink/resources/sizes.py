"""Byte sizes as people and directives write them: ``4096``, ``1GiB``, ``512Mi``, ``10GB``, ``1.5TiB``.

The units are NNF's (and Kubernetes quantities'): a unit with ``i`` is binary (``KiB`` = 1024), one
without is decimal (``KB`` = 1000); a trailing ``B`` changes nothing; no unit means bytes. A fraction
is rounded to whole bytes.
"""

from __future__ import annotations

import decimal
import re

_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:([kKMGTPE])(i?))?B?$")
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_BINARY = {"K": 2**10, "k": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50, "E": 2**60}
#: Units :func:`format_size` writes, largest first.
_FORMAT_UNITS = (
    ("EiB", 2**60),
    ("PiB", 2**50),
    ("TiB", 2**40),
    ("GiB", 2**30),
    ("MiB", 2**20),
    ("KiB", 2**10),
)


class SizeError(ValueError):
    """Not a size."""


def parse_size(value: int | str) -> int:
    """Bytes of ``value``: an integer (bytes) or a size string (see the module docstring)."""
    if isinstance(value, bool):
        raise SizeError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"{value} is negative")
        return value
    if not isinstance(value, str):
        raise SizeError(f"{value!r} is not a size")
    m = _SIZE.match(value.strip())
    if m is None:
        raise SizeError(
            f"{value!r} is not a size: write a number of bytes, or a number with a unit such as "
            "KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)"
        )
    number, unit, binary = m.groups()
    factor = 1 if unit is None else (_BINARY if binary else _DECIMAL)[unit]
    exact = decimal.Decimal(number) * factor
    return int(exact.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that divides it exactly (``1GiB``, ``1536MiB``);
    bytes otherwise."""
    for name, factor in _FORMAT_UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{name}"
    return str(size)


def approximate_size(size: float) -> str:
    """``size`` bytes for people to read at a glance: three significant digits in the largest binary
    unit it reaches (``7.54MiB``, ``312MiB``, ``1.20GiB``); for progress and rates, not for exact sizes."""
    value, unit = float(size), "B"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, name
    if unit == "B":
        return f"{int(value)}B"
    digits = 0 if value >= 99.95 else 1 if value >= 9.995 else 2
    return f"{value:.{digits}f}{unit}"
