"""Computed traits as pure functions of a person's events: every kind, windows, merging, arrival order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from omni_profile import computed
from omni_profile.computed import Catalog, Definition
from omni_profile.domain import Event

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)

DEFAULTS = Catalog.of(
    [
        Definition("last_purchase_at", computed.LAST_OCCURRENCE, "order_completed"),
        Definition("first_purchase_at", computed.FIRST_OCCURRENCE, "order_completed"),
        Definition("last_login_at", computed.LAST_OCCURRENCE, "logged_in", per_channel=True),
        Definition("preferred_channel", computed.MOST_FREQUENT_CHANNEL),
        Definition("favourite_category", computed.MOST_FREQUENT_VALUE, property="category"),
        Definition("lifetime_value", computed.LIFETIME_VALUE, "order_completed", currency_code="EUR"),
        Definition("orders_online", computed.COUNT, "order_completed", channels=frozenset({"web", "app"})),
        Definition("orders_in_store", computed.COUNT, "order_completed", channels=frozenset({"store"})),
        Definition("orders_30d", computed.COUNT, "order_completed", window_days=30),
        Definition("items_7d", computed.SUM, "cart_item_added", property="quantity", window_days=7),
        Definition("spend_by_channel", computed.SUM, "order_completed", property="revenue", per_channel=True),
    ]
)

_counter = iter(range(10**9))


def _event(type_: str, days_ago: float, channel: str | None = "web", **properties: Any) -> Event:
    when = NOW - timedelta(days=days_ago)
    return Event(
        id=f"e{next(_counter)}",
        type=type_,
        channel=channel,
        occurred_at=when,
        received_at=NOW,
        properties=properties,
    )


def _values(events: list[Event]) -> dict[str, Any]:
    return computed.values(DEFAULTS, computed.compute(DEFAULTS, events, NOW), NOW)


def test_every_kind_from_a_shopping_history() -> None:
    events = [
        _event("logged_in", 40, "web"),
        _event("logged_in", 2, "app"),
        _event("product_viewed", 39, "web", category="shoes"),
        _event("product_viewed", 3, "app", category="hats"),
        _event("product_viewed", 1, "app", category="hats"),
        _event("order_completed", 35, "web", revenue=19.99, currency="EUR"),
        _event("order_completed", 10, "store", revenue=100, currency="EUR"),
        _event("order_completed", 1, "app", revenue_minor=500, currency="EUR"),
        _event("order_completed", 1, "app", revenue=7, currency="USD"),
        _event("cart_item_added", 8, "web", quantity=5),
        _event("cart_item_added", 2, "web", quantity=2),
    ]
    values = _values(events)
    assert values == {
        "last_purchase_at": "2026-06-29T12:00:00Z",
        "first_purchase_at": "2026-05-26T12:00:00Z",
        "last_login_at": {"app": "2026-06-28T12:00:00Z", "web": "2026-05-21T12:00:00Z"},
        "preferred_channel": "app",  # five events each on web and app: the most recently used wins
        "favourite_category": "hats",
        "lifetime_value": {"amount_minor": 1999 + 10000 + 500, "currency_code": "EUR"},
        "orders_online": 3,
        "orders_in_store": 1,
        "orders_30d": 3,
        "items_7d": 2,
        "spend_by_channel": {"app": 7, "store": 100, "web": 19.99},
    }


def test_a_trait_with_nothing_to_count_is_absent() -> None:
    assert _values([_event("page_viewed", 1, None)]) == {}


def test_ties_go_to_the_most_recent_value() -> None:
    events = [_event("page_viewed", 5, "web"), _event("page_viewed", 1, "app")]
    assert _values(events)["preferred_channel"] == "app"


def test_a_window_slides_without_new_events() -> None:
    state = computed.compute(DEFAULTS, [_event("order_completed", 29)], NOW)
    definition = DEFAULTS.by_name["orders_30d"]
    assert computed.value(definition, state["orders_30d"], NOW) == 1
    assert computed.value(definition, state["orders_30d"], NOW + timedelta(days=2)) == 0


def test_events_older_than_the_window_are_not_kept() -> None:
    state = computed.compute(DEFAULTS, [_event("order_completed", 45)], NOW)
    assert "orders_30d" not in state


def test_order_revenue_in_minor_units_follows_the_currency() -> None:
    assert computed.order_revenue_minor({"revenue": 12.5, "currency": "EUR"}, "EUR") == 1250
    assert computed.order_revenue_minor({"revenue": 1200, "currency": "JPY"}, "JPY") == 1200
    assert computed.order_revenue_minor({"revenue": 1.234, "currency": "KWD"}, "KWD") == 1234
    assert computed.order_revenue_minor({"revenue": 12.5}, "EUR") == 1250
    assert computed.order_revenue_minor({"revenue": 12.5, "currency": "USD"}, "EUR") is None
    assert computed.order_revenue_minor({"revenue": "12.5"}, "EUR") is None
    assert computed.order_revenue_minor({"revenue": 0.285}, "EUR") == 29


def test_an_orders_value_is_its_revenue_else_its_total_else_its_value() -> None:
    assert computed.order_revenue_minor({"revenue": 10, "total": 12, "value": 14}, "EUR") == 1000
    assert computed.order_revenue_minor({"total": 12, "value": 14}, "EUR") == 1200
    assert computed.order_revenue_minor({"value": 14}, "EUR") == 1400
    assert computed.order_revenue_minor({"revenue": None, "total": 12}, "EUR") == 1200
    assert computed.order_revenue_minor({"revenue_minor": 999, "revenue": 10}, "EUR") == 999
    # The first one present decides: a revenue that is not a number is not replaced by the total.
    assert computed.order_revenue_minor({"revenue": "10", "total": 12}, "EUR") is None
    assert computed.order_revenue_minor({"order_id": "o-1"}, "EUR") is None


def test_the_most_frequent_value_keeps_a_bounded_number_of_values() -> None:
    events = [_event("product_viewed", 1, category=f"c{n}") for n in range(computed.MAX_DISTINCT_VALUES + 20)]
    events += [_event("product_viewed", 2, category="c3")] * 3
    state = computed.compute(DEFAULTS, events, NOW)
    assert len(state["favourite_category"]) == computed.MAX_DISTINCT_VALUES
    assert _values(events)["favourite_category"] == "c3"


def test_message_outcomes_do_not_count_for_every_event_traits() -> None:
    sent = _event("message_sent", 1, "email")
    sent.source = "gateway"
    assert _values([sent, _event("page_viewed", 2, "web")])["preferred_channel"] == "web"


def test_merging_states_equals_computing_the_union() -> None:
    first = [_event("order_completed", 3, "web", revenue=10), _event("page_viewed", 1, "web")]
    second = [_event("order_completed", 20, "store", revenue=5), _event("logged_in", 2, "app")]
    merged = computed.merge_states(
        [computed.compute(DEFAULTS, first, NOW), computed.compute(DEFAULTS, second, NOW)]
    )
    assert computed.values(DEFAULTS, merged, NOW) == _values(first + second)


_TYPES = ["order_completed", "logged_in", "product_viewed", "cart_item_added", "page_viewed"]
_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(_TYPES),
        st.floats(0, 60, allow_nan=False),
        st.sampled_from(["web", "app", "store", None]),
        st.sampled_from(["shoes", "hats", "bags"]),
        st.integers(1, 500),
    ),
    max_size=25,
)


@given(_EVENTS, st.randoms(), st.integers(0, 25))
def test_values_do_not_depend_on_arrival_order_or_batching(
    raw: list[tuple[str, float, str | None, str, int]], rng: random.Random, cut: int
) -> None:
    events = [
        _event(t, days, channel, category=category, revenue=amount / 10, quantity=amount % 4 + 1)
        for t, days, channel, category, amount in raw
    ]
    in_order = _values(sorted(events, key=lambda e: e.occurred_at))
    shuffled = list(events)
    rng.shuffle(shuffled)
    state: computed.State = {}
    computed.apply(DEFAULTS, state, shuffled[:cut], NOW)
    computed.apply(DEFAULTS, state, shuffled[cut:], NOW)
    assert computed.values(DEFAULTS, state, NOW) == in_order
