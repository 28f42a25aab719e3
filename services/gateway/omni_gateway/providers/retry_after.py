"""Reading an HTTP provider's Retry-After (RFC 9110 §10.2.3) into the seconds a ProviderFailure carries."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "retry_after_seconds"]

MAX_RETRY_AFTER_S = 24 * 3600.0
"""A longer hint is read as a day: a provider's clock or a typo must not park a message for weeks."""


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """The wait a Retry-After header asks for: delay-seconds (a fraction too, as some endpoints send) or an
    HTTP-date; None when absent or unreadable. A date in the past or a negative number means now (0)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return None if math.isnan(number) else min(max(number, 0.0), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
