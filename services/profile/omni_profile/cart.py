"""The live cart of a person: how cart events change it, whichever channel they came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from omni_profile.domain import CART_ITEM_ADDED, CART_ITEM_REMOVED, ORDER_COMPLETED, CartLine, Event

Cart = dict[str, CartLine]
"""A cart: its lines by product id."""


def apply_event(cart: Cart, event: Event) -> Cart:
    """Return the cart after one event; events that do not concern the cart leave it as it is.

    cart_item_added adds the quantity (a new line, or more of an existing one, whose name and price the
    event refreshes when it carries them); cart_item_removed takes the quantity away and drops the line at
    zero (removing what is not there changes nothing); order_completed empties the cart.
    """
    if event.type == ORDER_COMPLETED:
        return {}
    item = event.cart_item
    if item is None or event.type not in (CART_ITEM_ADDED, CART_ITEM_REMOVED):
        return cart
    current = cart.get(item.product_id)
    result = dict(cart)
    if event.type == CART_ITEM_ADDED:
        if current is None:
            result[item.product_id] = item
        else:
            result[item.product_id] = replace(
                current,
                quantity=current.quantity + item.quantity,
                name=item.name or current.name,
                unit_price_minor=(
                    item.unit_price_minor if item.unit_price_minor is not None else current.unit_price_minor
                ),
                currency_code=item.currency_code or current.currency_code,
            )
        return result
    if current is None:
        return cart
    remaining = current.quantity - item.quantity
    if remaining > 0:
        result[item.product_id] = replace(current, quantity=remaining)
    else:
        del result[item.product_id]
    return result


def apply_events(cart: Cart, events: Iterable[Event]) -> Cart:
    """Return the cart after the events, applied in the order given."""
    for event in events:
        cart = apply_event(cart, event)
    return cart


def order_key(event: Event) -> tuple[datetime, str, str]:
    """The order cart events apply in: when they happened, then (source, id) to break ties the same way
    whatever order they arrived in."""
    return (event.occurred_at, event.source, event.id)


def recompute(events: Iterable[Event]) -> Cart:
    """The cart a set of cart events leads to, applied in the order they happened (see order_key).

    An order empties exactly the lines added before it, whenever its events arrive, so the cart is a
    function of the events alone and late or out-of-order arrivals end where in-order ones would.
    """
    return apply_events({}, sorted(events, key=order_key))


def sorted_lines(cart: Mapping[str, CartLine]) -> list[CartLine]:
    """The cart's lines in a stable order (by product id), as it is shown and published."""
    return [cart[product_id] for product_id in sorted(cart)]
