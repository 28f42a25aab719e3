"""Late and out-of-order messages over HTTP end with the profile in-order arrival gives, traits included.

The gRPC counterpart (tests/profile/test_ingestion.py) covers the cart and computed traits; traits arrive
with identify calls, which only the tracking endpoint takes, so they are compared here.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from omni.profile.v1 import profile_pb2

from ..support import unique
from .conftest import Endpoint

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)

# (write key, hours after T0, message fields). Sources rank app > web > api > pos (pos is not in the ranking).
_HISTORY: list[tuple[str, float, dict[str, Any]]] = [
    # An old app value, then a pos one more than a year later: the app's has gone stale and pos replaces it.
    ("wk_app", -400 * 24, {"type": "identify", "traits": {"first_name": "Ada"}}),
    ("wk_web", 0, {"type": "identify", "traits": {"plan": "silver", "city": "Paris"}}),
    ("wk_web", 0.5, {"type": "track", "event": "Product Viewed", "properties": {"category": "shoes"}}),
    ("wk_pos", 1, {"type": "identify", "traits": {"first_name": "Ada Lovelace"}}),
    ("wk_app", 2, {"type": "identify", "traits": {"plan": "gold"}}),
    (
        "wk_app",
        2.5,
        {"type": "track", "event": "Product Added", "properties": {"product_id": "sku-1", "quantity": 2}},
    ),
    ("wk_web", 3, {"type": "track", "event": "Product Added", "properties": {"sku": "sku-2", "name": "Hat"}}),
    # web ranks below app: the plan stays gold; the city is web's own, and the newer one wins.
    ("wk_web", 4, {"type": "identify", "traits": {"plan": "bronze", "city": "Lyon"}}),
    ("wk_web", 4.5, {"type": "track", "event": "Product Removed", "properties": {"product_id": "sku-1"}}),
    (
        "wk_web",
        5,
        {"type": "track", "event": "Order Completed", "properties": {"revenue": 42.5, "currency": "EUR"}},
    ),
    # pos ranks below web, and web's city is not a year old: Nice is ignored.
    ("wk_pos", 6, {"type": "identify", "traits": {"city": "Nice", "loyalty_points": 10}}),
    ("wk_app", 7, {"type": "track", "event": "Product Added", "properties": {"product_id": "sku-3"}}),
    ("wk_pos", 8, {"type": "identify", "traits": {"loyalty_points": 25}}),
]


def _history(user: str) -> list[tuple[str, dict[str, Any]]]:
    """The history as (write key, message) for one user, each message with its own id and timestamp."""
    return [
        (
            write_key,
            {
                **fields,
                "messageId": unique("mid-"),
                "userId": user,
                "timestamp": (T0 + timedelta(hours=hours)).isoformat(),
            },
        )
        for write_key, hours, fields in _HISTORY
    ]


def _observable(profile: profile_pb2.Profile) -> tuple[Any, ...]:
    return (
        dict(profile.traits),
        {
            name: (meta.source, meta.update_time.ToDatetime(tzinfo=UTC))
            for name, meta in profile.trait_metadata.items()
        },
        [(i.product_id, i.quantity, i.name) for i in profile.cart.items],
        dict(profile.computed_traits),
        profile.event_count,
        [e.type for e in profile.recent_events],
    )


async def _send(endpoint: Endpoint, messages: list[tuple[str, dict[str, Any]]]) -> None:
    for write_key, message in messages:
        status, answer = await endpoint.post(f"/v1/{message['type']}", message, write_key=write_key)
        assert status == 200, answer


async def test_late_and_shuffled_messages_end_with_the_in_order_traits(endpoint: Endpoint) -> None:
    in_order, shuffled, reversed_, batched = (unique("user-") for _ in range(4))
    await _send(endpoint, _history(in_order))
    mixed = _history(shuffled)
    random.Random(7).shuffle(mixed)
    await _send(endpoint, mixed)
    await _send(endpoint, _history(reversed_)[::-1])
    # Each source sends its own messages as one batch, newest first, the last source first.
    by_key: dict[str, list[dict[str, Any]]] = {}
    for write_key, message in _history(batched):
        by_key.setdefault(write_key, []).append(message)
    for write_key in reversed(by_key):
        status, answer = await endpoint.post(
            "/v1/batch", {"batch": by_key[write_key][::-1]}, write_key=write_key
        )
        assert (status, answer["accepted"]) == (200, len(by_key[write_key])), answer

    expected = _observable(await endpoint.profile_of("user_id", in_order))
    assert expected[0] == {"first_name": "Ada Lovelace", "plan": "gold", "city": "Lyon", "loyalty_points": 25}
    assert expected[1]["plan"] == ("app", T0 + timedelta(hours=2))
    assert expected[1]["city"] == ("web", T0 + timedelta(hours=4))
    assert expected[2] == [("sku-3", 1, "")]
    for user in (shuffled, reversed_, batched):
        assert _observable(await endpoint.profile_of("user_id", user)) == expected, user
