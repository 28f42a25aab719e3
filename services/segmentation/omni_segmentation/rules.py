"""Segment rules: conditions over a person's facts, evaluated at a given instant.

Pure domain code: no protobuf, SQL or I/O. `evaluate` says whether a person satisfies a condition at `now`;
`next_change` says the earliest later instant at which that answer can change by the passage of time alone
(events leaving a count window, the time since an event growing), so a clock can re-check the person then
and only then.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from omni_segmentation.occurrences import (
    RESOLUTION,
    event_sum,
    matching,
    matching_in_window,
    property_head,
    then_not_cases,
    window_changes,
)
from omni_segmentation.values import (
    MISSING,
    Comparison,
    as_time,
    bucket,
    compare_numbers,
    compare_trait,
    count_in_window,
    next_anniversary,
    trait_value,
)

# Instants examined when looking for the next change; beyond them the person is simply re-checked at the
# last one examined, which is early, never late.
MAX_CANDIDATES = 2_000


@dataclass(frozen=True)
class AllOf:
    """Holds when every one of the conditions holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    """Holds when at least one of the conditions holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    """Holds when the condition does not."""

    condition: Condition


@dataclass(frozen=True)
class TraitCompare:
    """A trait compared with a JSON value (None for EXISTS / NOT_EXISTS)."""

    trait: str
    comparison: Comparison
    value: Any = None


@dataclass(frozen=True)
class PropertyFilter:
    """An event's property compared with a JSON value, as a trait is (None for EXISTS / NOT_EXISTS)."""

    property: str
    comparison: Comparison
    value: Any = None


@dataclass(frozen=True)
class EventCount:
    """The number of events of a type that occurred within [now - window, now] (on the channels, passing the
    filters, when given), compared with a count."""

    event_type: str
    window: timedelta
    comparison: Comparison
    count: int
    channels: frozenset[int] = frozenset()
    filters: tuple[PropertyFilter, ...] = ()

    @property
    def detailed(self) -> bool:
        """Whether it looks at events' channels or properties, or at every type ("" event type), so needs
        EventDetails, not only times."""
        return bool(self.channels or self.filters or not self.event_type)


@dataclass(frozen=True)
class EventSum:
    """The sum of a numeric property over the events of a type within [now - window, now] (on the channels,
    passing the filters), compared with a value; a missing or non-numeric property adds nothing."""

    event_type: str
    property: str
    window: timedelta
    comparison: Comparison
    value: float
    channels: frozenset[int] = frozenset()
    filters: tuple[PropertyFilter, ...] = ()


@dataclass(frozen=True)
class CartUnits:
    """The number of units in the cart compared with a count."""

    comparison: Comparison
    item_count: int


@dataclass(frozen=True)
class SinceLastEvent:
    """The person's last event of a type happened at least `at_least` ago (false if there was none)."""

    event_type: str
    at_least: timedelta


@dataclass(frozen=True)
class TraitAge:
    """How long ago a time-valued trait is (now minus its value) compared with a duration; false when the
    trait is missing or not a time."""

    trait: str
    comparison: Comparison
    age: timedelta


@dataclass(frozen=True)
class Anniversary:
    """From `within` before the next yearly anniversary of a date-valued trait until that day ends."""

    trait: str
    within: timedelta


@dataclass(frozen=True)
class FirstEvent:
    """How long ago the person's first event of a type ("" for any type) happened, compared with a
    duration; false for a person without one."""

    event_type: str
    comparison: Comparison
    age: timedelta


@dataclass(frozen=True)
class ThenNot:
    """The latest `event_type` within the lookback (per value of `key`, when given) is at least `within` old
    and no `absent_event_type` (with the same key value) followed it within `within`."""

    event_type: str
    absent_event_type: str
    within: timedelta
    lookback: timedelta
    key: str = ""


@dataclass(frozen=True)
class InSegment:
    """The person is a member of another segment (as evaluated before this one in the same pass)."""

    segment_id: uuid.UUID


@dataclass(frozen=True)
class RandomBucket:
    """The person's stable bucket (0-99, from the salt and the person id) lies in [lowest, highest]."""

    salt: str
    lowest: int
    highest: int


@dataclass(frozen=True)
class Contact:
    """Profile's contact verdict for a channel (an omni.common.v1.Channel number) and purpose ("marketing",
    "transactional") is `allowed`."""

    channel: int
    purpose: str
    allowed: bool


Condition = (
    AllOf
    | AnyOf
    | Not
    | TraitCompare
    | TraitAge
    | Anniversary
    | EventCount
    | EventSum
    | CartUnits
    | SinceLastEvent
    | FirstEvent
    | InSegment
    | ThenNot
    | RandomBucket
    | Contact
)


@dataclass(frozen=True)
class EventDetail:
    """One occurrence with what filters and sums look at: its channel (an omni.common.v1.Channel number) and
    the properties kept of it (those rules name)."""

    occurred_at: datetime
    channel: int = 0
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PersonFacts:
    """What is known of one person, as far as rules can ask.

    `computed_traits` are profile's (orders_30d, lifetime_value, custom ones): a trait condition reads a
    trait set on the profile, else the computed trait of that name. `event_times` holds, per event type, the occurrence instants (ascending) at least as recent as the longest
    window any rule counts that type over; `last_event_at` holds the latest occurrence of each type ever seen.
    """

    person_id: uuid.UUID | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    cart_units: int = 0
    computed_traits: Mapping[str, Any] = field(default_factory=dict)
    event_times: Mapping[str, Sequence[datetime]] = field(default_factory=dict)
    last_event_at: Mapping[str, datetime] = field(default_factory=dict)
    segments: Mapping[uuid.UUID, bool] = field(default_factory=dict)
    """Whether the person is a member of each segment in_segment rules refer to (absent: not)."""
    first_event_at: Mapping[str, datetime] = field(default_factory=dict)
    """The first occurrence of each type first_event rules ask about ("" for any type)."""
    event_details: Mapping[str, Sequence[EventDetail]] = field(default_factory=dict)
    """Per event type some rule filters or sums, the occurrences (ascending) with channel and properties."""
    contact: Mapping[tuple[int, str], tuple[bool, str]] = field(default_factory=dict)
    """Per (channel, purpose) a contact rule asks about: whether contact is allowed, and why (a reason of
    omni_kit.contact); a pair not given is refused."""


@dataclass(frozen=True)
class Requirements:
    """The facts a set of conditions needs beyond the person's row: counted types with their longest window,
    'since' types, and the (channel, purpose) pairs of contact rules."""

    counted: Mapping[str, timedelta]
    since: frozenset[str]
    contacts: frozenset[tuple[int, str]] = frozenset()
    firsts: frozenset[str] = frozenset()
    """The event types first_event rules ask about ("" for any)."""
    segments: frozenset[uuid.UUID] = frozenset()
    """The segments in_segment rules refer to."""
    detailed: Mapping[str, timedelta] = field(default_factory=dict)
    """Event types filtered or summed, with their longest window: read with channels and properties."""
    properties: frozenset[str] = frozenset()
    """The event properties rules name (top-level names): the ones kept of each event."""

    @property
    def longest_window(self) -> timedelta | None:
        """The longest window over which any event type is counted or summed, if any is."""
        return max((*self.counted.values(), *self.detailed.values()), default=None)


def evaluate(condition: Condition, facts: PersonFacts, now: datetime) -> bool:
    """Tell whether the person described by facts satisfies condition at instant now."""
    match condition:
        case AllOf(conditions):
            return all(evaluate(c, facts, now) for c in conditions)
        case AnyOf(conditions):
            return any(evaluate(c, facts, now) for c in conditions)
        case Not(inner):
            return not evaluate(inner, facts, now)
        case TraitCompare(trait, comparison, value):
            return compare_trait(person_trait(facts, trait), comparison, value)
        case EventCount(event_type, window, comparison, count) if condition.detailed:
            matching = matching_in_window(condition, facts, now)
            return compare_numbers(len(matching), comparison, count)
        case EventCount(event_type, window, comparison, count):
            return compare_numbers(
                count_in_window(facts.event_times.get(event_type, ()), window, now), comparison, count
            )
        case EventSum(comparison=comparison, value=value):
            return compare_numbers(event_sum(condition, facts, now)[0], comparison, value)
        case CartUnits(comparison, item_count):
            return compare_numbers(facts.cart_units, comparison, item_count)
        case SinceLastEvent(event_type, at_least):
            last = facts.last_event_at.get(event_type)
            return last is not None and now - last >= at_least
        case TraitAge(trait, comparison, age):
            at = as_time(person_trait(facts, trait))
            return at is not None and compare_numbers(now - at, comparison, age)  # type: ignore[arg-type]
        case FirstEvent(event_type, comparison, age):
            first = facts.first_event_at.get(event_type)
            return first is not None and compare_numbers(now - first, comparison, age)  # type: ignore[arg-type]
        case Anniversary(trait, within):
            at = as_time(person_trait(facts, trait))
            if at is None:
                return False
            day = next_anniversary(at, now)
            return day - within <= now < day + timedelta(days=1)
        case InSegment(segment_id):
            return facts.segments.get(segment_id, False)
        case ThenNot(within=within):
            return any(
                follow is None and now - started.occurred_at >= within
                for started, follow in then_not_cases(condition, facts, now)
            )
        case RandomBucket(salt, lowest, highest):
            return facts.person_id is not None and lowest <= bucket(facts.person_id, salt) <= highest
        case Contact(channel, purpose, allowed):
            verdict = facts.contact.get((channel, purpose))
            return (verdict is not None and verdict[0]) == allowed
    raise TypeError(f"not a condition: {condition!r}")


def next_change(condition: Condition, facts: PersonFacts, now: datetime) -> datetime | None:
    """The earliest instant after now at which evaluate() may answer differently, facts unchanged; None if never.

    Between the instants at which some leaf changes, every leaf (hence the whole condition) is constant, so
    the answer is the first such instant, in order, at which the whole condition's value differs from now's.
    """
    candidates = sorted(set(_leaf_changes(condition, facts, now)))
    if not candidates:
        return None
    current = evaluate(condition, facts, now)
    for instant in candidates[:MAX_CANDIDATES]:
        if evaluate(condition, facts, instant) != current:
            return instant
    if len(candidates) > MAX_CANDIDATES:
        return candidates[MAX_CANDIDATES - 1]
    return None


def _leaf_changes(condition: Condition, facts: PersonFacts, now: datetime) -> Iterator[datetime]:
    """Every instant after now at which some leaf of condition changes value (a superset is fine)."""
    match condition:
        case AllOf(conditions) | AnyOf(conditions):
            for child in conditions:
                yield from _leaf_changes(child, facts, now)
        case Not(inner):
            yield from _leaf_changes(inner, facts, now)
        case EventCount(event_type, window, _, _) if condition.detailed:
            yield from window_changes(matching(condition, facts), window, now)
        case EventSum(window=window):
            yield from window_changes(matching(condition, facts), window, now)
        case EventCount(event_type, window, _, _):
            for occurred in facts.event_times.get(event_type, ()):
                if occurred > now:
                    yield occurred  # a future-dated event starts counting when its time comes
                elif occurred + window >= now:
                    yield occurred + window + RESOLUTION  # and stops counting once it is older than window
        case SinceLastEvent(event_type, at_least):
            last = facts.last_event_at.get(event_type)
            if last is not None and last + at_least > now:
                yield last + at_least
        case Anniversary(trait, within):
            at = as_time(person_trait(facts, trait))
            if at is not None:
                day = next_anniversary(at, now)
                yield from (t for t in (day - within, day + timedelta(days=1)) if t > now)
        case FirstEvent(event_type, _, age):
            first = facts.first_event_at.get(event_type)
            if first is not None:
                yield from (t for t in (first + age, first + age + RESOLUTION) if t > now)
        case TraitAge(trait, _, age):
            at = as_time(person_trait(facts, trait))
            if at is not None:
                # The age reaches the threshold at at + age and passes it one step later.
                yield from (t for t in (at + age, at + age + RESOLUTION) if t > now)
        case ThenNot(event_type, absent_event_type, within, lookback):
            for detail in facts.event_details.get(event_type, ()):
                at = detail.occurred_at
                yield from (t for t in (at, at + within, at + lookback + RESOLUTION) if t > now)
            for detail in facts.event_details.get(absent_event_type, ()):
                if detail.occurred_at > now:
                    yield detail.occurred_at
        case TraitCompare() | CartUnits() | RandomBucket() | Contact() | InSegment():
            # An in_segment's changes by time are those of the segment it refers to, which the person's
            # next check covers (every segment is evaluated then).
            return


def person_trait(facts: PersonFacts, name: str) -> Any:
    """The value a trait condition on `name` sees: the profile's trait, else its computed trait, else
    MISSING."""
    value = trait_value(facts.traits, name)
    if value is MISSING or value is None:
        computed = trait_value(facts.computed_traits, name)
        if computed is not MISSING:
            return computed
    return value


def requirements(conditions: Sequence[Condition]) -> Requirements:
    """What event facts evaluating these conditions needs."""
    counted: dict[str, timedelta] = {}
    detailed: dict[str, timedelta] = {}
    properties: set[str] = set()
    since: set[str] = set()
    contacts: set[tuple[int, str]] = set()
    firsts: set[str] = set()
    referred: set[uuid.UUID] = set()
    for leaf in (leaf for c in conditions for leaf in leaves(c)):
        if isinstance(leaf, EventSum) or (isinstance(leaf, EventCount) and leaf.detailed):
            detailed[leaf.event_type] = max(detailed.get(leaf.event_type, leaf.window), leaf.window)
            properties |= {property_head(f.property) for f in leaf.filters}
            if isinstance(leaf, EventSum):
                properties.add(property_head(leaf.property))
        elif isinstance(leaf, EventCount):
            counted[leaf.event_type] = max(counted.get(leaf.event_type, leaf.window), leaf.window)
        elif isinstance(leaf, SinceLastEvent):
            since.add(leaf.event_type)
        elif isinstance(leaf, Contact):
            contacts.add((leaf.channel, leaf.purpose))
        elif isinstance(leaf, FirstEvent):
            firsts.add(leaf.event_type)
        elif isinstance(leaf, InSegment):
            referred.add(leaf.segment_id)
        elif isinstance(leaf, ThenNot):
            for event_type in (leaf.event_type, leaf.absent_event_type):
                detailed[event_type] = max(detailed.get(event_type, leaf.lookback), leaf.lookback)
            if leaf.key:
                properties.add(property_head(leaf.key))
    return Requirements(
        counted=counted,
        since=frozenset(since),
        contacts=frozenset(contacts),
        firsts=frozenset(firsts),
        segments=frozenset(referred),
        detailed=detailed,
        properties=frozenset(properties),
    )


def leaves(condition: Condition) -> Iterator[Condition]:
    """The leaf conditions (trait, event count, cart, since last event) of a condition tree."""
    match condition:
        case AllOf(conditions) | AnyOf(conditions):
            for child in conditions:
                yield from leaves(child)
        case Not(inner):
            yield from leaves(inner)
        case _:
            yield condition
