"""The cart rules: adds, removes and orders from any channel; merging carts; what to write."""

from __future__ import annotations

from datetime import UTC, datetime

from omni_profile import cart
from omni_profile.domain import CartLine, Event


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


def test_merged_carts_add_quantities_and_keep_the_survivors_details() -> None:
    survivor = {"sku-1": CartLine("sku-1", 1, "Boots", 1000, "EUR")}
    merged = [{"sku-1": CartLine("sku-1", 2, "Old name", 800, "EUR"), "sku-2": CartLine("sku-2", 1, "Hat")}]
    assert cart.merge_carts(survivor, merged) == {
        "sku-1": CartLine("sku-1", 3, "Boots", 1000, "EUR"),
        "sku-2": CartLine("sku-2", 1, "Hat"),
    }


def test_diff_lists_changed_lines_and_lines_gone() -> None:
    before = {"a": CartLine("a", 1), "b": CartLine("b", 1), "c": CartLine("c", 1)}
    after = {"a": CartLine("a", 1), "b": CartLine("b", 2), "d": CartLine("d", 1)}
    difference = cart.diff(before, after)
    assert sorted(line.product_id for line in difference.upserts) == ["b", "d"]
    assert difference.deletes == ["c"]
    assert not cart.diff(before, dict(before))


def test_lines_are_shown_by_product_id() -> None:
    lines = cart.sorted_lines({"b": CartLine("b", 1), "a": CartLine("a", 1)})
    assert [line.product_id for line in lines] == ["a", "b"]
