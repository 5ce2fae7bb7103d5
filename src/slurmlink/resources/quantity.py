"""Kubernetes resource quantities (``4Gi``, ``4G``, ``500m``, ``1e9``), exactly as the API server reads them.

Job resources are written the way Kubernetes users already write them, so the grammar is
apimachinery's ``resource.Quantity``, no looser: a signed decimal number and one suffix, binary
(``Ki Mi Gi Ti Pi Ei``), decimal (``n u m``, none, ``k M G T P E``) or an exponent (``e3``, ``E-2``).
``4G`` is 4 * 10^9 bytes and ``4Gi`` 4 * 2^30, as in Kubernetes; Slurm's own ``--mem=4G`` (binary) is
not this grammar and reaches Slurm only through :func:`mebibytes`. ``resources.sizes`` is the
lenient byte-size reader of NNF's directives (``10GB``, ``1GiB``), a different language kept apart
on purpose. Values are exact (``Decimal``); nothing is a float.
"""

from __future__ import annotations

import decimal
import re

#: The API server's own words when a quantity does not parse (``resource.ErrFormatWrong``).
FORMAT_ERROR = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exponent>[eE][+-]?\d+)|(?P<decimal>[numkMGTPE]?))$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": decimal.Decimal("1e-9"),
    "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("0.001"),
    "": decimal.Decimal(1),
    "k": decimal.Decimal(10**3),
    "M": decimal.Decimal(10**6),
    "G": decimal.Decimal(10**9),
    "T": decimal.Decimal(10**12),
    "P": decimal.Decimal(10**15),
    "E": decimal.Decimal(10**18),
}
MIB = 2**20


class QuantityError(ValueError):
    """Not a Kubernetes quantity; the message is the API server's."""


def parse_quantity(value: int | str) -> decimal.Decimal:
    """The exact value of ``value``: a JSON integer, or a quantity string (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise QuantityError(FORMAT_ERROR)
    if isinstance(value, int):
        return decimal.Decimal(value)
    m = _QUANTITY.match(value)
    if m is None:
        raise QuantityError(FORMAT_ERROR)
    number = decimal.Decimal(m["number"])
    if m["binary"]:
        return number * _BINARY[m["binary"]]
    if m["exponent"]:
        exponent = int(m["exponent"][1:])
        if abs(exponent) > 60:  # beyond what any quantity holds (apimachinery caps at 10^±18 scaling)
            raise QuantityError(FORMAT_ERROR)
        return number.scaleb(exponent)
    return number * _DECIMAL[m["decimal"] or ""]


def whole(value: int | str) -> int:
    """``value`` as a whole number, rounded up as Kubernetes' ``Quantity.Value()`` does (``1500m`` is 2)."""
    return int(parse_quantity(value).to_integral_value(rounding=decimal.ROUND_CEILING))


def mebibytes(value: int | str) -> int:
    """A memory quantity in whole MiB, rounded up: the unit of Slurm's ``--mem`` and ``--mem-per-cpu``."""
    exact = parse_quantity(value) / MIB
    return int(exact.to_integral_value(rounding=decimal.ROUND_CEILING))


def format_memory(value: int | str) -> str:
    """A memory quantity for a table cell: a string as it was written (``4G``, ``7812Mi``); a number of
    bytes in the largest binary unit that divides it (``4Gi``), else in bytes."""
    if isinstance(value, str):
        return value
    for name, factor in (
        ("Ei", 2**60),
        ("Pi", 2**50),
        ("Ti", 2**40),
        ("Gi", 2**30),
        ("Mi", 2**20),
        ("Ki", 2**10),
    ):
        if value and value % factor == 0:
            return f"{value // factor}{name}"
    return str(value)
