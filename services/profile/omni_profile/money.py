"""Amounts of money as profile keeps them: whole minor units of an ISO 4217 currency (1999 EUR for 19.99).

Senders give amounts in major units (an order's revenue, a product's price); they become minor units here,
by the number of digits each currency's minor unit has.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeGuard

MAX_MINOR = 2**63 - 1
"""The largest amount in minor units a Money message holds (int64)."""

_ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "ISK",
        "JPY",
        "KMF",
        "KRW",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
_THREE_DECIMAL = frozenset(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"])


def minor_digits(currency_code: str) -> int:
    """How many digits the currency's minor unit has (2 for EUR, 0 for JPY, 3 for KWD)."""
    if currency_code in _ZERO_DECIMAL:
        return 0
    return 3 if currency_code in _THREE_DECIMAL else 2


def is_amount(value: Any) -> TypeGuard[int | float]:
    """Whether value is a finite JSON number (booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def to_minor(amount: float, currency_code: str) -> int:
    """An amount in major units as whole minor units of the currency, half a unit rounded away from zero.

    The amount is taken as written (19.99, not the binary float just below it), so 0.285 EUR is 29 cents.
    """
    exact = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    return int(exact.scaleb(minor_digits(currency_code)).to_integral_value(rounding=ROUND_HALF_UP))
