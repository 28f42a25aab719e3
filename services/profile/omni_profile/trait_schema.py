"""The types of well-known traits: a value of the wrong type is refused with a field violation.

Traits not listed here take any JSON value. The list is deliberately short: the traits other services and
channels rely on (addressing, greeting, the VIP flag, the birthday for birthday offers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _email(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return None if _EMAIL.fullmatch(value) else "must be an email address"


def _date(value: Any) -> str | None:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return "must be a date as YYYY-MM-DD"
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return "must be a valid date"
    return "must not be in the future" if day > date.today() else None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _whole_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        return "must be a whole number"
    return None if value >= 0 else "must not be negative"


KNOWN_TRAITS: dict[str, Callable[[Any], str | None]] = {
    "email": _email,
    "phone": _string,
    "first_name": _string,
    "last_name": _string,
    "name": _string,
    "city": _string,
    "country": _string,
    "language": _string,
    "birthday": _date,
    "vip": _boolean,
    "loyalty_points": _whole_number,
}
"""Known trait names and the check of their values (each returns what is wrong, or None)."""


def trait_problems(values: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with the known traits among values, by name; removals (None) are always fine."""
    problems: dict[str, str] = {}
    for name, value in values.items():
        check = KNOWN_TRAITS.get(name)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem is not None:
            problems[name] = problem
    return problems
