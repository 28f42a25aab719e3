"""Amounts of money as profile keeps them: whole minor units of an ISO 4217 currency (1999 EUR for 19.99).

Senders give amounts in major units (an order's revenue, a product's price); they become minor units here,
by the number of digits each currency's minor unit has (omni_kit.money, from CLDR).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeGuard

from omni_kit.money import minor_unit_digits

MAX_MINOR = 2**63 - 1
"""The largest amount in minor units a Money message holds (int64)."""


def is_amount(value: Any) -> TypeGuard[int | float]:
    """Whether value is a finite JSON number (booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def to_minor(amount: float, currency_code: str) -> int:
    """An amount in major units as whole minor units of the currency, half a unit rounded away from zero.

    The amount is taken as written (19.99, not the binary float just below it), so 0.285 EUR is 29 cents.
    """
    exact = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    return int(exact.scaleb(minor_unit_digits(currency_code)).to_integral_value(rounding=ROUND_HALF_UP))
