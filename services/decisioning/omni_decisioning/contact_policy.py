"""Contact policy: how often a person may be sent marketing, whichever journey (or caller) asks.

A cap says "at most N marketing messages per period", on every channel or on one: per calendar day or week
in the workspace's time zone (a week starts on Monday), or per rolling 24 hours, 7 days or 30 days. What
counts is the contact log (`contact_log`): each send a journey requests, written in the transaction that
requests it (so two journeys triggered a moment apart see each other's send), and each marketing message the
gateway announces as sent, from whoever asked for it (SendMessage too), keyed by the request id so a
journey's own send counts once; a message the gateway fails is taken out again. Transactional messages are
neither capped nor counted.

The pure rules are here; journeys.py applies them under a per-person lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "24h", "7d", "30d"]

_ROLLING = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}

RETENTION = timedelta(days=32)
"""How long the contact log keeps a send: longer than the longest period a cap can have."""


@dataclass(frozen=True)
class Cap:
    """At most `max_messages` marketing messages per `period`, on `channel` (omni.common.v1.Channel; 0: all)."""

    max_messages: int
    period: Period
    channel: int = 0

    def window_start(self, now: datetime, zone: ZoneInfo) -> datetime:
        """When the period holding `now` began."""
        rolling = _ROLLING.get(self.period)
        if rolling is not None:
            return now - rolling
        local = now.astimezone(zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "week":
            midnight -= timedelta(days=local.weekday())
        # Midnight as a wall-clock time of the zone (fold 0 across a DST change), then back to an instant.
        return midnight.replace(tzinfo=None).replace(tzinfo=zone)

    def describe(self) -> str:
        per = {
            "day": "calendar day",
            "week": "calendar week",
            "24h": "24 hours",
            "7d": "7 days",
            "30d": "30 days",
        }
        on = f" on channel {self.channel}" if self.channel else ""
        return f"at most {self.max_messages} marketing messages per {per[self.period]}{on}"


@dataclass(frozen=True)
class Contact:
    """A marketing send counted against the caps."""

    channel: int
    at: datetime


def earliest_start(caps: Sequence[Cap], now: datetime, zone: ZoneInfo) -> datetime | None:
    """The start of the longest window among the caps (None without caps): how far back to read the log."""
    return min((cap.window_start(now, zone) for cap in caps), default=None)


def reached_cap(
    caps: Iterable[Cap], contacts: Sequence[Contact], channel: int, now: datetime, zone: ZoneInfo
) -> Cap | None:
    """The first cap one more send on `channel` would break, given the person's contacts; None if none."""
    for cap in caps:
        if cap.channel and cap.channel != channel:
            continue
        start = cap.window_start(now, zone)
        counted = sum(
            1
            for c in contacts
            if c.at >= start and c.at <= now and (not cap.channel or c.channel == cap.channel)
        )
        if counted >= cap.max_messages:
            return cap
    return None
