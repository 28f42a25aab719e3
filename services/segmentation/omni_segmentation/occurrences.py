"""What event rules read of a person's occurrences: those a count or sum keeps (channels, property filters)
within its window, sums of a property, the cases of "A and then no B", and the instants at which they can
change. Pure functions over PersonFacts (rules.py), no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from omni_segmentation.values import MISSING, compare_trait, is_number, trait_value

if TYPE_CHECKING:
    from omni_segmentation.rules import (
        EventCount,
        EventDetail,
        EventSum,
        PersonFacts,
        PropertyFilter,
        ThenNot,
    )

# Timestamps are kept to the microsecond: an occurrence leaves the closed window [now - window, now] one
# resolution step after now - window passes it (rules.RESOLUTION is the same).
RESOLUTION = timedelta(microseconds=1)


def window_changes(instants: Iterator[datetime], window: timedelta, now: datetime) -> Iterator[datetime]:
    """The instants after now at which occurrences at these instants enter or leave a window ending now."""
    for occurred in instants:
        if occurred > now:
            yield occurred
        elif occurred + window >= now:
            yield occurred + window + RESOLUTION


def matching(condition: EventCount | EventSum, facts: PersonFacts) -> Iterator[datetime]:
    """The instants of the person's occurrences the condition's channels and filters keep."""
    for detail in facts.event_details.get(condition.event_type, ()):
        if _passes(detail, condition.channels, condition.filters):
            yield detail.occurred_at


def _passes(detail: EventDetail, channels: frozenset[int], filters: Sequence[PropertyFilter]) -> bool:
    if channels and detail.channel not in channels:
        return False
    return all(
        compare_trait(trait_value(detail.properties, f.property), f.comparison, f.value) for f in filters
    )


def matching_in_window(
    condition: EventCount | EventSum, facts: PersonFacts, now: datetime
) -> list[EventDetail]:
    """The person's occurrences within the condition's window ending now that its channels and filters keep."""
    since = now - condition.window
    return [
        d
        for d in facts.event_details.get(condition.event_type, ())
        if since <= d.occurred_at <= now and _passes(d, condition.channels, condition.filters)
    ]


def event_sum(condition: EventSum, facts: PersonFacts, now: datetime) -> tuple[float, int]:
    """The sum of the condition's property over the matching occurrences in its window, and how many."""
    matching = matching_in_window(condition, facts, now)
    total = 0.0
    for detail in matching:
        value = trait_value(detail.properties, condition.property)
        if is_number(value):
            total += value
    return total, len(matching)


_NO_KEY = object()


def _key_of(detail: EventDetail, key: str) -> Any:
    """The value of the key property an event carries, made hashable; _NO_KEY when it carries none (and
    None, one group, when the condition has no key)."""
    if not key:
        return None
    value = trait_value(detail.properties, key)
    if value is MISSING or value is None:
        return _NO_KEY
    return json.dumps(value, sort_keys=True)


def then_not_cases(
    condition: ThenNot, facts: PersonFacts, now: datetime
) -> list[tuple[EventDetail, EventDetail | None]]:
    """Per key value (one group without a key), the latest `event_type` within the lookback, and the first
    `absent_event_type` with the same value that followed it within `within` (None when none did)."""
    latest: dict[Any, EventDetail] = {}
    for detail in facts.event_details.get(condition.event_type, ()):
        if now - condition.lookback <= detail.occurred_at <= now:
            group = _key_of(detail, condition.key)
            if group is not _NO_KEY:
                latest[group] = detail  # ascending: the last one stays
    cases: list[tuple[EventDetail, EventDetail | None]] = []
    absent = facts.event_details.get(condition.absent_event_type, ())
    for group, started in latest.items():
        until = min(started.occurred_at + condition.within, now)
        follow = next(
            (
                d
                for d in absent
                if started.occurred_at <= d.occurred_at <= until and _key_of(d, condition.key) == group
            ),
            None,
        )
        cases.append((started, follow))
    return cases


def property_head(name: str) -> str:
    """The top-level property a (dotted) property name reaches into: the one kept of each event."""
    return name.split(".", 1)[0]
