"""Values as segment rules compare them: comparisons of traits, counts and sums, a trait's value by a
(dotted) name, times read from trait values, and the stable random bucket. Pure functions, no I/O."""

from __future__ import annotations

import bisect
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class Comparison(StrEnum):
    """How a measured value is compared with a condition's value."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


ORDERING = frozenset({Comparison.GT, Comparison.GTE, Comparison.LT, Comparison.LTE})


PRESENCE = frozenset({Comparison.EXISTS, Comparison.NOT_EXISTS})


MISSING = object()
"""What trait_value answers for a name the value does not hold."""


def as_time(value: Any) -> datetime | None:
    """A trait's value as an instant: an RFC 3339 time (no offset: UTC) or a date (its midnight UTC); None
    for anything else."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def bucket(person_id: uuid.UUID, salt: str) -> int:
    """The person's stable random bucket for a salt, 0 to 99: the first 8 bytes of SHA-256 over the salt, a
    NUL and the person id's 16 bytes, modulo 100 (the bias of a 64-bit modulus is negligible)."""
    digest = hashlib.sha256(salt.encode() + b"\x00" + person_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") % 100


def count_in_window(times: Sequence[datetime], window: timedelta, now: datetime) -> int:
    """How many of the ascending instants lie within [now - window, now]."""
    return bisect.bisect_right(times, now) - bisect.bisect_left(times, now - window)


def is_present(value: Any) -> bool:
    """Whether a value person_trait answered is there (not missing, not null)."""
    return value is not MISSING and value is not None


def trait_value(traits: Mapping[str, Any], name: str) -> Any:
    """The trait's value, or MISSING; a dotted name ("address.city") reaches into nested objects."""
    if name in traits:
        return traits[name]
    value: Any = traits
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def compare_trait(actual: Any, comparison: Comparison, expected: Any) -> bool:
    """Compare a trait's value with the expected one.

    A missing or null trait satisfies only NOT_EXISTS. Numbers compare numerically, strings
    lexicographically (so ISO dates order correctly); ordering a number against a string is false, as is
    any comparison of a boolean with a number.
    """
    present = actual is not MISSING and actual is not None
    if comparison is Comparison.EXISTS:
        return present
    if comparison is Comparison.NOT_EXISTS:
        return not present
    if not present:
        return False
    if comparison is Comparison.EQ:
        return _same(actual, expected)
    if comparison is Comparison.NE:
        return not _same(actual, expected)
    if is_number(actual) and is_number(expected):
        return compare_numbers(actual, comparison, expected)
    if isinstance(actual, str) and isinstance(expected, str):
        return _order(actual, comparison, expected)
    return False


def compare_numbers(actual: float, comparison: Comparison, expected: float) -> bool:
    """Compare two numbers; EXISTS and NOT_EXISTS make no sense for them and are false."""
    if comparison is Comparison.EQ:
        return actual == expected
    if comparison is Comparison.NE:
        return not compare_numbers(actual, Comparison.EQ, expected)
    if comparison in ORDERING:
        return _order(actual, comparison, expected)
    return False


def _order(actual: Any, comparison: Comparison, expected: Any) -> bool:
    if comparison is Comparison.GT:
        return bool(actual > expected)
    if comparison is Comparison.GTE:
        return bool(actual >= expected)
    if comparison is Comparison.LT:
        return bool(actual < expected)
    if comparison is Comparison.LTE:
        return bool(actual <= expected)
    return False


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(actual: Any, expected: Any) -> bool:
    if is_number(actual) and is_number(expected):
        return compare_numbers(actual, Comparison.EQ, expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    return bool(actual == expected)


def next_anniversary(at: datetime, now: datetime) -> datetime:
    """The start (UTC midnight) of the first yearly anniversary of at's month and day whose day has not
    ended at now; 29 February falls on the 28th in other years."""
    for year in (now.year - 1, now.year, now.year + 1):
        day = _anniversary_in(at, year)
        if day + timedelta(days=1) > now:
            return day
    return _anniversary_in(at, now.year + 2)


def _anniversary_in(at: datetime, year: int) -> datetime:
    moment = at.astimezone(UTC)
    try:
        return datetime(year, moment.month, moment.day, tzinfo=UTC)
    except ValueError:  # 29 February in a common year
        return datetime(year, moment.month, moment.day - 1, tzinfo=UTC)
