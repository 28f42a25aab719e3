"""Amounts of money as Omni keeps them: whole minor units of an ISO 4217 currency (1999 EUR for 19.99).

How many digits a currency's minor unit has comes from the Unicode CLDR through babel, so every service
counts the same way and new currencies need no table of ours. CLDR gives the digits used in practice: for
the Iraqi dinar, whose fils nobody uses, 0 where ISO 4217 says 3.
"""

from __future__ import annotations

from babel.numbers import get_currency_precision


def minor_unit_digits(currency_code: str) -> int:
    """How many digits the currency's minor unit has: 2 for EUR, 0 for JPY, 3 for KWD; 2 for a code CLDR does
    not know."""
    return int(get_currency_precision(currency_code.upper()))
