"""Segment rules: conditions over a person's facts, evaluated at a given instant.

Pure domain code: no protobuf, SQL or I/O. `evaluate` says whether a person satisfies a condition at `now`;
`next_change` says the earliest later instant at which that answer can change by the passage of time alone
(events leaving a count window, the time since an event growing), so a clock can re-check the person then
and only then.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

# Timestamps are kept to the microsecond (Python and PostgreSQL): an occurrence leaves the closed window
# [now - window, now] one resolution step after now - window passes it.
RESOLUTION = timedelta(microseconds=1)

# Instants examined when looking for the next change; beyond them the person is simply re-checked at the
# last one examined, which is early, never late.
MAX_CANDIDATES = 2_000


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
        """Whether it looks at events' channels or properties (so needs EventDetails, not only times)."""
        return bool(self.channels or self.filters)


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


_MISSING = object()


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
            yield from _window_changes(_matching(condition, facts), window, now)
        case EventSum(window=window):
            yield from _window_changes(_matching(condition, facts), window, now)
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


def _window_changes(instants: Iterator[datetime], window: timedelta, now: datetime) -> Iterator[datetime]:
    """The instants after now at which occurrences at these instants enter or leave a window ending now."""
    for occurred in instants:
        if occurred > now:
            yield occurred
        elif occurred + window >= now:
            yield occurred + window + RESOLUTION


def _matching(condition: EventCount | EventSum, facts: PersonFacts) -> Iterator[datetime]:
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
        if _is_number(value):
            total += value
    return total, len(matching)


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


_NO_KEY = object()


def _key_of(detail: EventDetail, key: str) -> Any:
    """The value of the key property an event carries, made hashable; _NO_KEY when it carries none (and
    None, one group, when the condition has no key)."""
    if not key:
        return None
    value = trait_value(detail.properties, key)
    if value is _MISSING or value is None:
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


def bucket(person_id: uuid.UUID, salt: str) -> int:
    """The person's stable random bucket for a salt, 0 to 99: the first 8 bytes of SHA-256 over the salt, a
    NUL and the person id's 16 bytes, modulo 100 (the bias of a 64-bit modulus is negligible)."""
    digest = hashlib.sha256(salt.encode() + b"\x00" + person_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") % 100


def count_in_window(times: Sequence[datetime], window: timedelta, now: datetime) -> int:
    """How many of the ascending instants lie within [now - window, now]."""
    return bisect.bisect_right(times, now) - bisect.bisect_left(times, now - window)


def person_trait(facts: PersonFacts, name: str) -> Any:
    """The value a trait condition on `name` sees: the profile's trait, else its computed trait, else
    _MISSING."""
    value = trait_value(facts.traits, name)
    if value is _MISSING or value is None:
        computed = trait_value(facts.computed_traits, name)
        if computed is not _MISSING:
            return computed
    return value


def is_present(value: Any) -> bool:
    """Whether a value person_trait answered is there (not missing, not null)."""
    return value is not _MISSING and value is not None


def trait_value(traits: Mapping[str, Any], name: str) -> Any:
    """The trait's value, or _MISSING; a dotted name ("address.city") reaches into nested objects."""
    if name in traits:
        return traits[name]
    value: Any = traits
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def compare_trait(actual: Any, comparison: Comparison, expected: Any) -> bool:
    """Compare a trait's value with the expected one.

    A missing or null trait satisfies only NOT_EXISTS. Numbers compare numerically, strings
    lexicographically (so ISO dates order correctly); ordering a number against a string is false, as is
    any comparison of a boolean with a number.
    """
    present = actual is not _MISSING and actual is not None
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
    if _is_number(actual) and _is_number(expected):
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(actual: Any, expected: Any) -> bool:
    if _is_number(actual) and _is_number(expected):
        return compare_numbers(actual, Comparison.EQ, expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    return bool(actual == expected)


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
