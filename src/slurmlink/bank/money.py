"""Service-unit amounts: ``Decimal`` in the code and the API, whole ten-thousandths in the database.

Both SQLite and PostgreSQL store integers exactly, and integer sums never round, so the ledger's
invariants (entries sum to zero, balances equal the sum of their entries) hold to the last digit on
either database. Text from users is parsed strictly: a float, NaN, infinity or a fifth decimal place
is refused rather than rounded behind anyone's back.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from slurmlink.bank.errors import InvalidRequest

#: Stored amounts are integers of this fraction of a service unit.
SCALE = 10_000
_QUANTUM = Decimal(1) / SCALE
#: The largest amount the ledger accepts (well inside a signed 64-bit integer of ten-thousandths).
MAXIMUM = Decimal("100000000000000")


class AmountError(InvalidRequest, ValueError):
    """An amount that is not a plain decimal number of service units the ledger can hold."""


def parse(value: object, *, what: str = "amount", allow_negative: bool = False) -> Decimal:
    """``value`` (str, int or Decimal) as an exact Decimal with at most four decimal places."""
    if isinstance(value, (bool, float)):
        raise AmountError(f'{what} must be a decimal string such as "12.50", not {value!r}')
    try:
        amount = Decimal(value) if isinstance(value, (int, Decimal)) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise AmountError(f'{what} {value!r} is not a decimal number (write it like "12.50")') from None
    if not amount.is_finite():
        raise AmountError(f"{what} must be a finite number, not {value!r}")
    if amount != amount.quantize(_QUANTUM, rounding=ROUND_HALF_UP):
        raise AmountError(f"{what} {value!r} has more than four decimal places")
    if amount < 0 and not allow_negative:
        raise AmountError(f"{what} must not be negative (got {value!r})")
    if abs(amount) > MAXIMUM:
        raise AmountError(f"{what} {value!r} is larger than the ledger holds ({MAXIMUM})")
    return amount


def to_units(amount: Decimal) -> int:
    """``amount`` in stored units (exact: amounts were parsed to four places at most)."""
    return int((amount * SCALE).to_integral_value(rounding=ROUND_HALF_UP))


def from_units(units: int) -> Decimal:
    """Stored units as a Decimal with the four places the ledger keeps, trailing zeros trimmed to two."""
    value = (Decimal(units) / SCALE).quantize(_QUANTUM)
    two = value.quantize(Decimal("0.01"))
    return two if two == value else value


def text(units: int) -> str:
    """Stored units as the API writes amounts: a decimal string (``"12.50"``)."""
    return str(from_units(units))
