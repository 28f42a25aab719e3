"""Computed traits: definitions as data, evaluated incrementally from events.

Each definition keeps, per person, a small state of buckets; a bucket is four numbers
[count, total, first time, last time] (times in microseconds since the epoch). Every kind is a function of
these, and merging two buckets is adding counts and totals and taking the earliest and latest times, so
the state of a set of events does not depend on the order they arrive in: a late event lands in its bucket
like any other. Buckets are:

- "" for a trait over all matching events;
- the channel name for per-channel traits and the most frequent channel;
- the property's value for the most frequent value;
- the UTC day ("2026-11-22") for windowed counts and sums: the value is the sum of the days inside the
  window, so a window slides without rewriting anything, and days that left it are dropped on the next
  write. The window is counted in whole UTC days (today and the N-1 days before).

The most frequent value keeps at most MAX_DISTINCT_VALUES buckets per person: when a new value would
exceed that, the least frequent (then least recent) is dropped, so past that many distinct values the
answer is approximate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from omni_profile.domain import GATEWAY_SOURCE, Event
from omni_profile.money import is_amount, to_minor

COUNT = "count"
SUM = "sum"
FIRST_OCCURRENCE = "first_occurrence"
LAST_OCCURRENCE = "last_occurrence"
MOST_FREQUENT_VALUE = "most_frequent_value"
MOST_FREQUENT_CHANNEL = "most_frequent_channel"
LIFETIME_VALUE = "lifetime_value"
KINDS = (
    COUNT,
    SUM,
    FIRST_OCCURRENCE,
    LAST_OCCURRENCE,
    MOST_FREQUENT_VALUE,
    MOST_FREQUENT_CHANNEL,
    LIFETIME_VALUE,
)

BACKFILLING = "backfilling"
READY = "ready"

MAX_DISTINCT_VALUES = 50
MAX_VALUE_LENGTH = 128

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Cell = list[float]
"""[count, total, first microseconds, last microseconds]."""
TraitState = dict[str, Cell]
"""A trait's buckets by key."""
State = dict[str, TraitState]
"""A person's computed-trait state: each trait's buckets, by trait name."""


@dataclass(frozen=True)
class Definition:
    """A computed trait's definition; see omni.profile.v1.ComputedTrait for what each field means."""

    name: str
    kind: str
    event_type: str | None = None
    channels: frozenset[str] = frozenset()
    property: str | None = None
    window_days: int = 0
    per_channel: bool = False
    currency_code: str | None = None
    description: str = ""
    state: str = READY
    created_at: datetime | None = None


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: float) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=int(value))


def rfc3339(value: float) -> str:
    """Microseconds since the epoch as an RFC 3339 UTC time, e.g. "2026-11-22T10:00:00Z"."""
    return from_micros(value).isoformat().replace("+00:00", "Z")


def _cutoff(window_days: int, now: datetime) -> str:
    return (now.date() - timedelta(days=window_days - 1)).isoformat()


@dataclass
class Catalog:
    """The definitions in force, indexed for the hot path: by event type, and those for every type."""

    definitions: tuple[Definition, ...] = ()
    by_type: dict[str, tuple[Definition, ...]] = field(default_factory=dict)
    any_type: tuple[Definition, ...] = ()
    by_name: dict[str, Definition] = field(default_factory=dict)

    @classmethod
    def of(cls, definitions: Iterable[Definition]) -> Catalog:
        """Index some definitions."""
        ordered = tuple(sorted(definitions, key=lambda d: d.name))
        by_type: dict[str, list[Definition]] = {}
        for definition in ordered:
            if definition.event_type:
                by_type.setdefault(definition.event_type, []).append(definition)
        return cls(
            definitions=ordered,
            by_type={t: tuple(ds) for t, ds in by_type.items()},
            any_type=tuple(d for d in ordered if not d.event_type),
            by_name={d.name: d for d in ordered},
        )

    def matching(self, event: Event) -> Iterable[Definition]:
        """The definitions an event may count for (channels are checked by contribution)."""
        typed = self.by_type.get(event.type, ())
        if event.source == GATEWAY_SOURCE:
            # Message outcomes are things done to the person, not their behaviour: only named types count them.
            return typed
        return typed + self.any_type if self.any_type else typed


def contribution(definition: Definition, event: Event, today: date) -> tuple[str, float] | None:
    """The bucket an event adds to and the amount it adds to the total; None if it does not count."""
    channel = event.channel
    if definition.channels and channel not in definition.channels:
        return None
    kind = definition.kind
    if kind == MOST_FREQUENT_CHANNEL:
        return None if channel is None else (channel, 0.0)
    if kind == MOST_FREQUENT_VALUE:
        value = event.properties.get(definition.property or "")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float) and math.isfinite(value):
            value = str(int(value)) if float(value).is_integer() else str(value)
        # The values are keys of the JSONB state, which cannot hold a NUL: such a value does not count.
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH or "\x00" in value:
            return None
        return (value, 0.0)
    amount = 0.0
    if kind == SUM:
        value = event.properties.get(definition.property or "")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        amount = float(value)
    elif kind == LIFETIME_VALUE:
        revenue = order_revenue_minor(event.properties, definition.currency_code or "")
        if revenue is None:
            return None
        amount = float(revenue)
    if definition.per_channel:
        return None if channel is None else (channel, amount)
    if definition.window_days:
        day = event.occurred_at.astimezone(UTC).date()
        if (today - day).days >= definition.window_days:
            return None
        return (day.isoformat(), amount)
    return ("", amount)


ORDER_VALUE_PROPERTIES = ("revenue", "total", "value")
"""Where an order's value is read from, the first present winning: Segment's e-commerce spec has revenue
(without shipping and tax) and total (with them) on Order Completed, and value on other money events."""


def order_revenue_minor(properties: Mapping[str, Any], currency_code: str) -> int | None:
    """An order's value in the currency's minor units, or None when it has none in that currency.

    revenue_minor (already in minor units) comes first, then the major-unit ORDER_VALUE_PROPERTIES in their
    order; an order without a currency is taken to be in the trait's.
    """
    currency = properties.get("currency")
    if isinstance(currency, str) and currency and currency.upper() != currency_code:
        return None
    minor = properties.get("revenue_minor")
    if is_amount(minor):
        return int(minor)
    for name in ORDER_VALUE_PROPERTIES:
        amount = properties.get(name)
        if amount is not None:
            return to_minor(amount, currency_code) if is_amount(amount) else None
    return None


def apply(catalog: Catalog, state: State, events: Iterable[Event], now: datetime) -> set[str]:
    """Add events to a person's state in place; return the names of the traits whose state changed."""
    today = now.astimezone(UTC).date()
    touched: set[str] = set()
    for event in events:
        definitions = catalog.matching(event)
        if not definitions:
            continue
        at: float | None = None
        for definition in definitions:
            added = contribution(definition, event, today)
            if added is None:
                continue
            if at is None:
                at = micros(event.occurred_at)
            bucket, amount = added
            buckets = state.setdefault(definition.name, {})
            cell = buckets.get(bucket)
            if cell is None:
                buckets[bucket] = [1, amount, at, at]
            else:
                cell[0] += 1
                cell[1] += amount
                if at < cell[2]:
                    cell[2] = at
                if at > cell[3]:
                    cell[3] = at
            touched.add(definition.name)
    for name in touched:
        _trim(catalog, name, state, now)
    return touched


def _trim(catalog: Catalog, name: str, state: State, now: datetime) -> None:
    definition = catalog.by_name.get(name)
    if definition is None:
        return
    buckets = state[name]
    if definition.window_days and not definition.per_channel:
        cutoff = _cutoff(definition.window_days, now)
        for key in [k for k in buckets if k < cutoff]:
            del buckets[key]
    elif definition.kind == MOST_FREQUENT_VALUE and len(buckets) > MAX_DISTINCT_VALUES:
        ranked = sorted(buckets.items(), key=lambda item: (item[1][0], item[1][3], item[0]), reverse=True)
        state[name] = dict(ranked[:MAX_DISTINCT_VALUES])


def merge_states(states: Sequence[State]) -> State:
    """The state of the union of the events behind several states (used when persons merge)."""
    result: State = {}
    for state in states:
        for name, buckets in state.items():
            target = result.setdefault(name, {})
            for key, cell in buckets.items():
                current = target.get(key)
                if current is None:
                    target[key] = list(cell)
                else:
                    target[key] = [
                        current[0] + cell[0],
                        current[1] + cell[1],
                        min(current[2], cell[2]),
                        max(current[3], cell[3]),
                    ]
    return result


def _number(value: float) -> int | float:
    # Sums of fractional amounts differ in the last bits with the order they were added in; rounding to
    # nine decimals hides that, so the value is the same whatever order events arrived in.
    rounded = round(value, 9)
    return int(rounded) if float(rounded).is_integer() else rounded


def value(definition: Definition, buckets: Mapping[str, Cell] | None, now: datetime) -> Any:
    """The trait's value from its buckets (None when there is nothing yet)."""
    if not buckets:
        return None
    kind = definition.kind
    if kind in (MOST_FREQUENT_VALUE, MOST_FREQUENT_CHANNEL):
        return max(buckets.items(), key=lambda item: (item[1][0], item[1][3], item[0]))[0]
    if definition.per_channel:
        return {key: _cell_value(kind, cell) for key, cell in sorted(buckets.items())}
    if definition.window_days:
        cutoff = _cutoff(definition.window_days, now)
        inside = [cell for key, cell in buckets.items() if key >= cutoff]
        if kind == COUNT:
            return sum(int(cell[0]) for cell in inside)
        return _number(sum(cell[1] for cell in inside))
    cell = buckets.get("")
    if cell is None:
        return None
    if kind == LIFETIME_VALUE:
        return {"amount_minor": int(cell[1]), "currency_code": definition.currency_code or ""}
    return _cell_value(kind, cell)


def _cell_value(kind: str, cell: Cell) -> Any:
    if kind == COUNT:
        return int(cell[0])
    if kind == FIRST_OCCURRENCE:
        return rfc3339(cell[2])
    if kind == LAST_OCCURRENCE:
        return rfc3339(cell[3])
    return _number(cell[1])


def values(catalog: Catalog, state: Mapping[str, TraitState], now: datetime) -> dict[str, Any]:
    """Every computed trait's value for a person, by name; traits with nothing yet are left out."""
    result: dict[str, Any] = {}
    for definition in catalog.definitions:
        computed = value(definition, state.get(definition.name), now)
        if computed is not None:
            result[definition.name] = computed
    return result


def values_of(
    catalog: Catalog, state: Mapping[str, TraitState], names: Iterable[str], now: datetime
) -> dict[str, Any]:
    """The values of some traits only (used to see whether an update changed them)."""
    return {
        name: value(catalog.by_name[name], state.get(name), now) for name in names if name in catalog.by_name
    }


def compute(catalog: Catalog, events: Iterable[Event], now: datetime) -> State:
    """The state of a set of events, from nothing (backfills, merges, unmerges)."""
    state: State = {}
    apply(catalog, state, events, now)
    return state
