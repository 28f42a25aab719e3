"""The cart rules: adds, removes and orders from any channel, in the order they happened whatever the
order they arrive in."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from omni_profile import cart
from omni_profile.domain import CartLine, Event

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _event(type_: str, product_id: str = "", quantity: int = 1, **line: object) -> Event:
    now = datetime.now(UTC)
    item = CartLine(product_id=product_id, quantity=quantity, **line) if product_id else None  # type: ignore[arg-type]
    return Event(id="e", type=type_, channel="app", occurred_at=now, received_at=now, cart_item=item)


def test_adding_a_new_product_opens_a_line() -> None:
    result = cart.apply_event({}, _event("cart_item_added", "sku-1", 2, name="Boots"))
    assert result == {"sku-1": CartLine("sku-1", 2, "Boots")}


def test_adding_more_of_a_product_adds_the_quantity_and_refreshes_name_and_price() -> None:
    start = {"sku-1": CartLine("sku-1", 2, "Boots", 1000, "EUR")}
    result = cart.apply_event(
        start, _event("cart_item_added", "sku-1", 3, unit_price_minor=900, currency_code="EUR")
    )
    assert result == {"sku-1": CartLine("sku-1", 5, "Boots", 900, "EUR")}
    assert start["sku-1"].quantity == 2, "the input cart is left as it was"


def test_removing_part_of_a_line_subtracts() -> None:
    result = cart.apply_event({"sku-1": CartLine("sku-1", 3)}, _event("cart_item_removed", "sku-1", 1))
    assert result == {"sku-1": CartLine("sku-1", 2)}


def test_removing_all_or_more_drops_the_line() -> None:
    start = {"sku-1": CartLine("sku-1", 3), "sku-2": CartLine("sku-2", 1)}
    assert cart.apply_event(start, _event("cart_item_removed", "sku-1", 3)) == {"sku-2": CartLine("sku-2", 1)}
    assert cart.apply_event(start, _event("cart_item_removed", "sku-1", 9)) == {"sku-2": CartLine("sku-2", 1)}


def test_removing_a_product_not_in_the_cart_changes_nothing() -> None:
    start = {"sku-1": CartLine("sku-1", 1)}
    assert cart.apply_event(start, _event("cart_item_removed", "sku-9", 1)) is start


def test_an_order_empties_the_cart() -> None:
    assert cart.apply_event({"sku-1": CartLine("sku-1", 1)}, _event("order_completed")) == {}


def test_other_events_leave_the_cart_alone() -> None:
    start = {"sku-1": CartLine("sku-1", 1)}
    assert cart.apply_event(start, _event("page_viewed")) is start
    assert cart.apply_event(start, _event("product_viewed", "sku-2", 1)) is start


def test_events_apply_in_order() -> None:
    events = [
        _event("cart_item_added", "sku-1", 1),
        _event("cart_item_added", "sku-2", 2),
        _event("order_completed"),
        _event("cart_item_added", "sku-3", 1),
        _event("cart_item_removed", "sku-3", 1),
        _event("cart_item_added", "sku-1", 4),
    ]
    assert cart.apply_events({}, events) == {"sku-1": CartLine("sku-1", 4)}


def _at(type_: str, minute: int, product_id: str = "", quantity: int = 1, id_: str = "") -> Event:
    when = T0 + timedelta(minutes=minute)
    item = CartLine(product_id=product_id, quantity=quantity) if product_id else None
    return Event(
        id=id_ or f"e{minute}-{type_}-{product_id}",
        type=type_,
        channel="web",
        occurred_at=when,
        received_at=when,
        cart_item=item,
    )


def test_an_order_empties_only_the_lines_added_before_it() -> None:
    events = [
        _at("cart_item_added", 1, "sku-1", 2),
        _at("order_completed", 5),
        _at("cart_item_added", 7, "sku-2", 1),
    ]
    # The order arrives last, after an addition that happened after it.
    assert cart.recompute([events[0], events[2], events[1]]) == {"sku-2": CartLine("sku-2", 1)}


def test_events_at_the_same_moment_apply_in_a_fixed_order() -> None:
    add = _at("cart_item_added", 3, "sku-1", 1, id_="a")
    remove = _at("cart_item_removed", 3, "sku-1", 1, id_="b")
    assert cart.recompute([remove, add]) == cart.recompute([add, remove]) == {}


_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["cart_item_added", "cart_item_removed", "order_completed"]),
        st.integers(0, 20),
        st.sampled_from(["sku-1", "sku-2", "sku-3"]),
        st.integers(1, 3),
    ),
    max_size=12,
    unique_by=lambda e: (e[0], e[1], e[2]),
)


@given(_EVENTS, st.randoms())
def test_the_cart_is_the_same_whatever_order_events_arrive_in(
    raw: list[tuple[str, int, str, int]], rng: random.Random
) -> None:
    events = [_at(t, minute, sku if t != "order_completed" else "", q) for t, minute, sku, q in raw]
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert cart.recompute(shuffled) == cart.recompute(events)
    # Applying in time order, in two slices split anywhere, is the same as all at once.
    ordered = sorted(events, key=cart.order_key)
    middle = len(ordered) // 2
    split = cart.apply_events(cart.apply_events({}, ordered[:middle]), ordered[middle:])
    assert split == cart.recompute(events)


def test_lines_are_shown_by_product_id() -> None:
    lines = cart.sorted_lines({"b": CartLine("b", 1), "a": CartLine("a", 1)})
    assert [line.product_id for line in lines] == ["a", "b"]
