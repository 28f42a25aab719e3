"""The pure rules of journey steps: event filters, a random split's stable bucket, when a wait ends."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from omni.decisioning.v1 import decisioning_pb2 as d


def as_text(value: Any) -> str:
    """A property or trait value as text, for comparisons (42 and 42.0 are "42", true is "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def matches(filters: Iterable[d.PropertyFilter], properties: Mapping[str, Any]) -> bool:
    """Whether every filter holds for the properties (an empty equals: the property is present)."""
    for rule in filters:
        if rule.property not in properties or properties[rule.property] is None:
            return False
        if rule.equals and as_text(properties[rule.property]) != rule.equals:
            return False
    return True


def bucket(journey_id: uuid.UUID, step_id: str, person_id: uuid.UUID) -> int:
    """0 to 99, the same for the same journey, step and person (and spread evenly across persons)."""
    digest = hashlib.sha256(f"{journey_id}:{step_id}:{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def choose_branch(split: d.RandomSplitStep, value: int) -> d.RandomSplitStep.Branch:
    """The branch a bucket falls in (branches take consecutive ranges by their percentages)."""
    upper = 0
    for branch in split.branches:
        upper += branch.percent
        if value < upper:
            return branch
    return split.branches[-1]


def zone_of(traits: Mapping[str, Any], fallback: str, default: ZoneInfo) -> ZoneInfo:
    """The person's time zone (their "time_zone" trait), else the step's, else the service's."""
    for name in (traits.get("time_zone"), fallback):
        if isinstance(name, str) and name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return default


def next_time_of_day(now: datetime, rule: d.WaitStep.TimeOfDay, zone: ZoneInfo) -> datetime:
    """The first instant after now at hour:minute local time in the zone, on one of the weekdays if given."""
    local = now.astimezone(zone)
    for days in range(0, 8):
        day = local.date() + timedelta(days=days)
        if rule.weekdays and day.isoweekday() not in rule.weekdays:
            continue
        candidate = datetime(day.year, day.month, day.day, rule.hour, rule.minute, tzinfo=zone)
        if candidate > local:
            return candidate.astimezone(UTC)
    raise AssertionError("a week always holds an allowed day")


def trait_instant(value: Any, zone: ZoneInfo) -> datetime | None:
    """A trait's value as an instant: an ISO 8601 date-time (naive ones in the zone), or a date (its
    midnight in the zone); None when it is neither."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        parsed = datetime(day.year, day.month, day.day)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)
