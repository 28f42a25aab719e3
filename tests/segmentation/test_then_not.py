"""'Did A and then no B within T' (browse and cart abandonment), optionally per value of a key property:
the rule at instants, when it can next change, live through the clock, explained, and bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_segmentation.rules import EventDetail, PersonFacts, ThenNot, evaluate, next_change

from .builders import seconds
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
BROWSE = ThenNot("product_viewed", "cart_item_added", H, timedelta(days=1))
CART = ThenNot("cart_item_added", "order_completed", H, timedelta(days=1), key="cart_id")


def facts(**events: list[tuple[timedelta, dict[str, object]]]) -> PersonFacts:
    return PersonFacts(
        event_details={
            event_type: [
                EventDetail(NOW - ago, 0, props) for ago, props in sorted(items, key=lambda i: -i[0])
            ]
            for event_type, items in events.items()
        }
    )


def test_browse_abandonment_at_instants() -> None:
    viewed_2h = facts(product_viewed=[(2 * H, {})])
    assert evaluate(BROWSE, viewed_2h, NOW)
    assert not evaluate(BROWSE, facts(product_viewed=[(2 * H, {})], cart_item_added=[(1.5 * H, {})]), NOW)
    # Waiting: not yet; the clock comes back when the hour is up.
    recent = facts(product_viewed=[(timedelta(minutes=10), {})])
    assert not evaluate(BROWSE, recent, NOW)
    assert next_change(BROWSE, recent, NOW) == NOW + timedelta(minutes=50)
    # A later view starts the wait again; a view past the lookback no longer counts.
    assert not evaluate(BROWSE, facts(product_viewed=[(2 * H, {}), (timedelta(minutes=5), {})]), NOW)
    assert not evaluate(BROWSE, facts(product_viewed=[(timedelta(days=2), {})]), NOW)
    # A cart add after the hour does not rescue it.
    assert evaluate(BROWSE, facts(product_viewed=[(3 * H, {})], cart_item_added=[(H, {})]), NOW)


def test_cart_abandonment_per_cart() -> None:
    bought_c1 = facts(
        cart_item_added=[(2 * H, {"cart_id": "c1"})], order_completed=[(1.9 * H, {"cart_id": "c1"})]
    )
    assert not evaluate(CART, bought_c1, NOW)
    left_c2 = facts(
        cart_item_added=[(2 * H, {"cart_id": "c1"}), (2 * H, {"cart_id": "c2"}), (3 * H, {})],
        order_completed=[(1.9 * H, {"cart_id": "c1"})],
    )
    assert evaluate(CART, left_c2, NOW)
    # An order of another cart is not this cart's.
    assert evaluate(
        CART,
        facts(cart_item_added=[(2 * H, {"cart_id": "c1"})], order_completed=[(1.9 * H, {"cart_id": "c9"})]),
        NOW,
    )


def then_not(
    first: str, absent: str, within_s: float, lookback_s: float | None, key: str = ""
) -> pb.Condition:
    condition = pb.ThenNotCondition(
        event_type=first, absent_event_type=absent, within=seconds(within_s), key=key
    )
    if lookback_s is not None:
        condition.lookback.CopyFrom(seconds(lookback_s))
    return pb.Condition(then_not=condition)


async def test_browse_abandonment_live(segmentation: Segmentation, events: EventLog) -> None:
    viewed, carted = unique("viewed").replace("-", "_"), unique("carted").replace("-", "_")
    abandoned = await segmentation.create(
        unique("browse-abandon"), then_not(viewed, carted, 2, 3600, key="sku")
    )
    browser, shopper = person(), person()
    await segmentation.consumed(
        await segmentation.track(browser, viewed, properties={"sku": "a"}),
        await segmentation.track(shopper, viewed, properties={"sku": "b"}),
        await segmentation.track(shopper, carted, properties={"sku": "b"}),
    )
    await events.wait_for(ENTERED, browser, timeout_s=10)
    await asyncio.sleep(0.5)
    assert abandoned.name not in await segmentation.segments_of(shopper)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=abandoned.id, person_id=shopper)
    )
    assert answer.condition.kind == "then_not" and not answer.condition.holds
    assert answer.condition.summary.startswith(f"{viewed} ") and f"(sku 'b'), followed by {carted}" in (
        answer.condition.summary
    )


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (then_not("product_viewed", "cart_item_added", 60, None), {"segment.condition.then_not.lookback"}),
        (
            then_not("product_viewed", "product_added", 0, 60),
            {"segment.condition.then_not.absent_event_type", "segment.condition.then_not.within"},
        ),
        (
            then_not("", "x", 60, 60, key="a\x00"),
            {"segment.condition.then_not.event_type", "segment.condition.then_not.key"},
        ),
    ],
)
async def test_bad_sequences(segmentation: Segmentation, condition: pb.Condition, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-then"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
