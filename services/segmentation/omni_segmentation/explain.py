"""Why a person is in or out of a segment: the condition tree evaluated node by node, with the facts each
node saw. Pure domain code, like rules.py, whose evaluation it follows exactly."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from omni_kit import contact
from omni_segmentation import occurrences, rules, values

_SYMBOLS = {
    rules.Comparison.EQ: "=",
    rules.Comparison.NE: "≠",
    rules.Comparison.GT: ">",
    rules.Comparison.GTE: "≥",
    rules.Comparison.LT: "<",
    rules.Comparison.LTE: "≤",
}


@dataclass
class Explanation:
    """One node of a condition evaluated for a person: its path, kind, truth value, what it saw."""

    field: str
    kind: str
    holds: bool
    summary: str
    children: list[Explanation] = dataclasses.field(default_factory=list)
    trait_value: Any = None
    has_trait_value: bool = False
    count: int = 0
    last_event_at: datetime | None = None
    sum: float = 0.0


def explain(
    condition: rules.Condition,
    facts: rules.PersonFacts,
    now: datetime,
    path: str,
    names: Mapping[uuid.UUID, str] | None = None,
) -> Explanation:
    """The node `condition` at `path`, evaluated for facts at now, with its children; `names` names the
    segments in_segment rules refer to."""
    holds = rules.evaluate(condition, facts, now)
    match condition:
        case rules.AllOf(conditions) | rules.AnyOf(conditions):
            kind = "all" if isinstance(condition, rules.AllOf) else "any"
            children = [
                explain(child, facts, now, f"{path}.{kind}.conditions[{index}]", names)
                for index, child in enumerate(conditions)
            ]
            held = sum(c.holds for c in children)
            return Explanation(path, kind, holds, f"{held} of {len(children)} hold", children)
        case rules.Not(inner):
            child = explain(inner, facts, now, f"{path}.not", names)
            inner_says = "holds" if child.holds else "does not hold"
            return Explanation(path, "not", holds, f"the inner condition {inner_says}", [child])
        case rules.TraitCompare(trait, comparison, value):
            actual = rules.person_trait(facts, trait)
            present = values.is_present(actual)
            seen = _json(actual) if present else "absent"
            wanted = (
                comparison.value.replace("_", " ")
                if comparison in values.PRESENCE
                else f"{_SYMBOLS[comparison]} {_json(value)}"
            )
            return Explanation(
                path,
                "trait",
                holds,
                f"{trait} is {seen} ({wanted})",
                trait_value=actual if present else None,
                has_trait_value=present,
            )
        case rules.FirstEvent(event_type, comparison, age):
            first = facts.first_event_at.get(event_type)
            named = event_type or "event"
            if first is None:
                seen = f"no {named} ever"
            elif first > now:
                seen = f"the first {named} is {_elapsed(first - now)} ahead"
            else:
                seen = f"the first {named} was {_elapsed(now - first)} ago"
            return Explanation(
                path,
                "first_event",
                holds,
                f"{seen} ({_SYMBOLS[comparison]} {_duration(age)})",
                last_event_at=first,
            )
        case rules.Anniversary(trait, within):
            actual = rules.person_trait(facts, trait)
            present = values.is_present(actual)
            at = values.as_time(actual)
            if at is None:
                seen = f"{trait} is {_json(actual) if present else 'absent'}, not a date"
            else:
                day = values.next_anniversary(at, now)
                seen = (
                    f"{trait}'s anniversary is today"
                    if day <= now
                    else f"{trait}'s anniversary is on {day.date().isoformat()}, in {_elapsed(day - now)}"
                )
            return Explanation(
                path,
                "anniversary",
                holds,
                f"{seen} (within {_duration(within)})",
                trait_value=actual if present else None,
                has_trait_value=present,
            )
        case rules.TraitAge(trait, comparison, age):
            actual = rules.person_trait(facts, trait)
            present = values.is_present(actual)
            at = values.as_time(actual)
            if at is None:
                seen = f"{trait} is {_json(actual) if present else 'absent'}, not a time"
            elif at > now:
                seen = f"{trait} is {_elapsed(at - now)} ahead"
            else:
                seen = f"{trait} was {_elapsed(now - at)} ago"
            return Explanation(
                path,
                "trait_age",
                holds,
                f"{seen} ({_SYMBOLS[comparison]} {_duration(age)})",
                trait_value=actual if present else None,
                has_trait_value=present,
            )
        case rules.EventCount(event_type, window, comparison, count):
            if condition.detailed:
                seen_count = len(occurrences.matching_in_window(condition, facts, now))
            else:
                seen_count = values.count_in_window(facts.event_times.get(event_type, ()), window, now)
            return Explanation(
                path,
                "event_count",
                holds,
                f"{seen_count} {event_type or 'events'}{_which(condition)} in the last {_duration(window)} "
                f"({_SYMBOLS[comparison]} {count})",
                count=seen_count,
            )
        case rules.EventSum(event_type, prop, window, comparison, value):
            total, summed = occurrences.event_sum(condition, facts, now)
            return Explanation(
                path,
                "event_sum",
                holds,
                f"{prop} sums to {_json(total)} over {summed} {event_type}{_which(condition)} in the last "
                f"{_duration(window)} ({_SYMBOLS[comparison]} {_json(value)})",
                count=summed,
                sum=total,
            )
        case rules.CartUnits(comparison, item_count):
            return Explanation(
                path,
                "cart",
                holds,
                f"{facts.cart_units} units in the cart ({_SYMBOLS[comparison]} {item_count})",
                count=facts.cart_units,
            )
        case rules.SinceLastEvent(event_type, at_least):
            last = facts.last_event_at.get(event_type)
            seen = (
                f"the last {event_type} was {_elapsed(now - last)} ago" if last else f"no {event_type} ever"
            )
            return Explanation(
                path,
                "since_last_event",
                holds,
                f"{seen} (at least {_duration(at_least)})",
                last_event_at=last,
            )
        case rules.Contact(channel, purpose, allowed):
            verdict = facts.contact.get((channel, purpose), (False, "no_consent"))
            said = "allowed" if verdict[0] else "refused"
            wanted = "allowed" if allowed else "refused"
            where = f"{purpose} on {contact.channel_name(channel)}"
            return Explanation(path, "contact", holds, f"{where} is {said}: {verdict[1]} (asked: {wanted})")
        case rules.ThenNot(event_type, absent_event_type, within, lookback, key):
            cases = occurrences.then_not_cases(condition, facts, now)
            if not cases:
                summary = (
                    f"no {event_type}{' with a ' + key if key else ''} in the last {_duration(lookback)}"
                )
                return Explanation(path, "then_not", holds, summary)
            deciding = [(s, f) for s, f in cases if f is None and now - s.occurred_at >= within] or cases
            started, follow = max(deciding, key=lambda case: case[0].occurred_at)
            told = f"{event_type} {_elapsed(now - started.occurred_at)} ago"
            if key:
                told += f" ({key} {_json(values.trait_value(started.properties, key))})"
            if follow is not None:
                told += f", followed by {absent_event_type} {_elapsed(follow.occurred_at - started.occurred_at)} later"
            elif now - started.occurred_at >= within:
                told += f", no {absent_event_type} within {_duration(within)}"
            else:
                told += f", still waiting {_duration(within)} for {absent_event_type}"
            return Explanation(
                path, "then_not", holds, told, count=len(cases), last_event_at=started.occurred_at
            )
        case rules.InSegment(segment_id):
            said = "a member" if holds else "not a member"
            named = (names or {}).get(segment_id, str(segment_id))
            return Explanation(path, "in_segment", holds, f"{said} of {named}")
        case rules.RandomBucket(salt, lowest, highest):
            if facts.person_id is None:
                return Explanation(path, "random_bucket", holds, "no person, no bucket")
            number = values.bucket(facts.person_id, salt)
            return Explanation(
                path,
                "random_bucket",
                holds,
                f"bucket {number} for salt {salt!r} (in {lowest}-{highest})",
                count=number,
            )
    raise TypeError(f"not a condition: {condition!r}")


def _which(condition: rules.EventCount | rules.EventSum) -> str:
    """The channels and filters of a count or sum, in words: " on store with category = 'coffee'"."""
    text = ""
    if condition.channels:
        text += " on " + " or ".join(sorted(contact.channel_name(c) for c in condition.channels))
    for index, item in enumerate(condition.filters):
        text += " with " if index == 0 else " and "
        if item.comparison in values.PRESENCE:
            text += f"{item.property} {item.comparison.value.replace('_', ' ')}"
        else:
            text += f"{item.property} {_SYMBOLS[item.comparison]} {_json(item.value)}"
    return text


def _json(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JSON numbers arrive as floats: 9, not 9.0
    return str(value)


def _elapsed(span: timedelta) -> str:
    """A time that has passed, to a tenth of a day or hour: 200.0d, 2.5h, 15min, 40s."""
    seconds = int(span.total_seconds())
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f}d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f}h"
    if seconds >= 60:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def _duration(span: timedelta) -> str:
    """A span as marketers write it: 30d, 2h, 15min, 40s."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f}d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f}h"
    return f"{seconds}s"
