"""Minor units come from CLDR (babel): the digits profile stores amounts with are the digits the gateway
shows them with, for the currencies the hand tables knew and for those they did not."""

from __future__ import annotations

import pytest

from omni_gateway.rendering import format_amount
from omni_kit.money import minor_unit_digits
from omni_profile.money import to_minor


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("EUR", 2), ("usd", 2), ("JPY", 0), ("KRW", 0), ("CLP", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_minor_unit_digits_follow_cldr(currency: str, digits: int) -> None:
    assert minor_unit_digits(currency) == digits


def test_an_unknown_code_has_two_digits() -> None:
    assert minor_unit_digits("ZZZ") == 2


@pytest.mark.parametrize(
    ("price", "currency", "shown"),
    [
        (19.99, "EUR", "19.99 EUR"),
        (1200, "JPY", "1200 JPY"),
        (1.2345, "KWD", "1.235 KWD"),
        (0.5, "CLF", "0.5000 CLF"),
    ],
)
def test_what_profile_stores_the_gateway_shows_in_the_same_unit(
    price: float, currency: str, shown: str
) -> None:
    assert format_amount(to_minor(price, currency), currency) == shown
