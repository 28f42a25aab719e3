"""The live cart of a person: how cart events change it, whichever channel they came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

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


def merge_carts(survivor: Cart, merged: Iterable[Cart]) -> Cart:
    """The cart of persons found to be one: lines of the same product add up; the survivor's name wins."""
    result = dict(survivor)
    for cart in merged:
        for product_id, line in cart.items():
            current = result.get(product_id)
            if current is None:
                result[product_id] = line
            else:
                result[product_id] = replace(
                    current,
                    quantity=current.quantity + line.quantity,
                    name=current.name or line.name,
                    unit_price_minor=(
                        current.unit_price_minor
                        if current.unit_price_minor is not None
                        else line.unit_price_minor
                    ),
                    currency_code=current.currency_code or line.currency_code,
                )
    return result


@dataclass(frozen=True)
class CartDiff:
    """What to write to turn one stored cart into another."""

    upserts: list[CartLine]
    deletes: list[str]

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def diff(before: Mapping[str, CartLine], after: Mapping[str, CartLine]) -> CartDiff:
    """The lines to write and the product ids to delete to go from before to after."""
    upserts = [line for product_id, line in after.items() if before.get(product_id) != line]
    deletes = [product_id for product_id in before if product_id not in after]
    return CartDiff(upserts=upserts, deletes=deletes)


def sorted_lines(cart: Mapping[str, CartLine]) -> list[CartLine]:
    """The cart's lines in a stable order (by product id), as it is shown and published."""
    return [cart[product_id] for product_id in sorted(cart)]
