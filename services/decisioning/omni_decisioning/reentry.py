"""The journey frequency guard: at most one started run per journey and person within a window."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta


def is_reentry(started_at: Iterable[datetime], trigger_time: datetime, window: timedelta) -> bool:
    """True when a run of the same journey for the same person started within `window` of `trigger_time`.

    `started_at` holds the trigger times of earlier runs that did start (a send was requested). The window
    counts both ways, because events may arrive out of order: a late event triggered before a run that
    already started is as much a repeat as one triggered after it. A zero window disables the guard.
    """
    if window <= timedelta(0):
        return False
    return any(abs(trigger_time - started) < window for started in started_at)
