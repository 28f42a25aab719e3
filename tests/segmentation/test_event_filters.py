"""Event counts filtered by channel and by event properties, and sums of a numeric property: live, in
explain and preview, what is kept of an event (only the properties rules name), and bad input."""

from __future__ import annotations

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details

from .builders import seconds, value
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
STORE, WEB = common_pb2.CHANNEL_STORE, common_pb2.CHANNEL_WEB
DAY = 86_400


def where(name: str, comparison: int, json_value: object = None) -> pb.PropertyFilter:
    item = pb.PropertyFilter(property=name, comparison=comparison)  # type: ignore[arg-type]
    if json_value is not None:
        item.value.CopyFrom(value(json_value))
    return item


def counted(
    event_type: str,
    comparison: int,
    count: int,
    *,
    channels: tuple[int, ...] = (),
    filters: tuple[pb.PropertyFilter, ...] = (),
    window_s: float = DAY,
) -> pb.Condition:
    return pb.Condition(
        event_count=pb.EventCountCondition(
            event_type=event_type,
            window=seconds(window_s),
            comparison=comparison,  # type: ignore[arg-type]
            count=count,
            channels=list(channels),  # type: ignore[arg-type]
            properties=list(filters),
        )
    )


def summed(
    event_type: str,
    prop: str,
    comparison: int,
    total: float,
    *,
    channels: tuple[int, ...] = (),
    filters: tuple[pb.PropertyFilter, ...] = (),
    window_s: float = 90 * DAY,
) -> pb.Condition:
    return pb.Condition(
        event_sum=pb.EventSumCondition(
            event_type=event_type,
            property=prop,
            window=seconds(window_s),
            comparison=comparison,  # type: ignore[arg-type]
            value=total,
            channels=list(channels),  # type: ignore[arg-type]
            properties=list(filters),
        )
    )


async def test_coffee_bought_in_the_store(segmentation: Segmentation, events: EventLog) -> None:
    event_type = unique("coffee_order").replace("-", "_")
    coffee = await segmentation.create(
        unique("coffee-in-store"),
        counted(
            event_type,
            pb.COMPARISON_GTE,
            1,
            channels=(STORE,),
            filters=(where("category", pb.COMPARISON_EQ, "coffee"),),
        ),
    )
    in_store, online, tea = person(), person(), person()
    await segmentation.consumed(
        await segmentation.track(online, event_type, channel=WEB, properties={"category": "coffee"}),
        await segmentation.track(tea, event_type, channel=STORE, properties={"category": "tea"}),
    )
    await segmentation.track(
        in_store, event_type, channel=STORE, properties={"category": "coffee", "email": "a@example.com"}
    )
    await events.wait_for(ENTERED, in_store)
    assert coffee.name in await segmentation.segments_of(in_store)
    assert coffee.name not in await segmentation.segments_of(online)
    assert coffee.name not in await segmentation.segments_of(tea)
    # Only what a rule names is kept of an event: the category, not the email.
    kept = await segmentation.rows(
        "SELECT channel, properties FROM event_occurrences WHERE person_id = CAST(:p AS uuid)", p=in_store
    )
    assert [(row.channel, row.properties) for row in kept] == [(STORE, {"category": "coffee"})]

    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=coffee.id, person_id=online)
    )
    assert (
        answer.condition.summary == f"0 {event_type} on store with category = 'coffee' in the last 1d (≥ 1)"
    )


async def test_spent_at_least_100_in_90_days(segmentation: Segmentation, events: EventLog) -> None:
    event_type = unique("purchase").replace("-", "_")
    big = await segmentation.create(
        unique("big-spenders"), summed(event_type, "revenue", pb.COMPARISON_GTE, 100)
    )
    spender, odd = person(), person()
    await segmentation.consumed(
        await segmentation.track(spender, event_type, properties={"revenue": 60}),
        await segmentation.track(odd, event_type, properties={"revenue": 60}),
        await segmentation.track(odd, event_type, properties={"revenue": "lots"}),
        await segmentation.track(odd, event_type),
    )
    assert big.name not in await segmentation.segments_of(spender)
    await segmentation.track(spender, event_type, properties={"revenue": 40.5})
    await events.wait_for(ENTERED, spender)
    assert big.name not in await segmentation.segments_of(odd)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=big.id, person_id=spender)
    )
    node = answer.condition
    assert (node.kind, node.holds, node.sum, node.count) == ("event_sum", True, 100.5, 2)
    assert node.summary == f"revenue sums to 100.5 over 2 {event_type} in the last 90d (≥ 100)"
    preview = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=summed(event_type, "revenue", pb.COMPARISON_GTE, 60))
    )
    assert preview.match_count == 2


async def test_a_property_no_event_has_kept_is_warned_about(segmentation: Segmentation) -> None:
    event_type = unique("viewed").replace("-", "_")
    await segmentation.consumed(await segmentation.track(person(), event_type, properties={"sku": "x"}))
    created = await segmentation.stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment=pb.Segment(
                name=unique("sku-x"),
                condition=counted(
                    event_type, pb.COMPARISON_GT, 0, filters=(where("sku", pb.COMPARISON_EQ, "x"),)
                ),
            )
        )
    )
    assert [w.field for w in created.warnings] == ["segment.condition.event_count.properties[0].property"]
    assert "kept from when a rule first names them" in created.warnings[0].description


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (
            counted("order_completed", pb.COMPARISON_GT, 0, channels=(0,)),
            {"segment.condition.event_count.channels[0]"},
        ),
        (
            counted("order_completed", pb.COMPARISON_GT, 0, channels=(STORE, STORE)),
            {"segment.condition.event_count.channels"},
        ),
        (
            counted(
                "order_completed",
                pb.COMPARISON_GT,
                0,
                filters=(where("category", pb.COMPARISON_GT, {"a": 1}),),
            ),
            {"segment.condition.event_count.properties[0].value"},
        ),
        (
            counted("order_completed", pb.COMPARISON_GT, 0, filters=(where("", pb.COMPARISON_EQ, "x"),)),
            {"segment.condition.event_count.properties[0].property"},
        ),
        (
            counted(
                "order_completed",
                pb.COMPARISON_GT,
                0,
                filters=tuple(where("a", pb.COMPARISON_EXISTS) for _ in range(11)),
            ),
            {"segment.condition.event_count.properties"},
        ),
        (
            summed("product_added", "", pb.COMPARISON_GT, float("inf")),
            {
                "segment.condition.event_sum.event_type",
                "segment.condition.event_sum.property",
                "segment.condition.event_sum.value",
            },
        ),
    ],
)
async def test_bad_filters(segmentation: Segmentation, condition: pb.Condition, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-filter"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)


async def test_channels_and_properties_move_with_a_merge_and_back(
    segmentation: Segmentation, events: EventLog
) -> None:
    event_type = unique("store_order").replace("-", "_")
    loyal = await segmentation.create(
        unique("store-coffee"),
        counted(
            event_type,
            pb.COMPARISON_GTE,
            2,
            channels=(STORE,),
            filters=(where("category", pb.COMPARISON_EQ, "coffee"),),
        ),
    )
    survivor, merged = person(), person()
    await segmentation.consumed(
        await segmentation.track(survivor, event_type, channel=STORE, properties={"category": "coffee"}),
        await segmentation.track(merged, event_type, channel=STORE, properties={"category": "coffee"}),
    )
    assert loyal.name not in await segmentation.segments_of(survivor)
    await segmentation.merged(survivor, merged)
    await events.wait_for(ENTERED, survivor)
    kept = await segmentation.rows(
        "SELECT channel, properties FROM event_occurrences WHERE person_id = CAST(:p AS uuid)", p=survivor
    )
    assert sorted((row.channel, row.properties["category"]) for row in kept) == [(STORE, "coffee")] * 2
    # An unmerge gives the merged person's occurrence back, channel and properties included.
    await segmentation.consumed(await segmentation.unmerged(survivor, merged))
    back = await segmentation.rows(
        "SELECT channel, properties FROM event_occurrences WHERE person_id = CAST(:p AS uuid)", p=merged
    )
    assert [(row.channel, row.properties) for row in back] == [(STORE, {"category": "coffee"})]
    assert loyal.name not in await segmentation.segments_of(survivor)


async def test_active_on_the_app_counts_events_of_every_type(
    segmentation: Segmentation, events: EventLog
) -> None:
    app = common_pb2.CHANNEL_APP
    active = await segmentation.create(
        unique("active-in-app"),
        pb.Condition(
            event_count=pb.EventCountCondition(
                any_event_type=True,
                window=seconds(7 * DAY),
                comparison=pb.COMPARISON_GTE,
                count=3,
                channels=[app],
            )
        ),
    )
    busy, web = person(), person()
    await segmentation.consumed(
        await segmentation.track(busy, "screen_viewed", channel=app),
        await segmentation.track(busy, "search_made", channel=app),
        await segmentation.track(web, "screen_viewed", channel=WEB),
        await segmentation.track(web, "screen_viewed", channel=WEB),
        await segmentation.track(web, "screen_viewed", channel=app),
    )
    await segmentation.track(busy, "wishlist_opened", channel=app)
    await events.wait_for(ENTERED, busy)
    assert active.name not in await segmentation.segments_of(web)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=active.id, person_id=web)
    )
    assert answer.condition.summary == "1 events on app in the last 7d (≥ 3)"


@pytest.mark.parametrize(
    "count",
    [
        pb.EventCountCondition(any_event_type=True, event_type="page_viewed"),
        pb.EventCountCondition(),
    ],
)
async def test_a_type_or_every_type(segmentation: Segmentation, count: pb.EventCountCondition) -> None:
    count.window.CopyFrom(seconds(60))
    count.comparison = pb.COMPARISON_GT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(
                segment=pb.Segment(name=unique("which-type"), condition=pb.Condition(event_count=count))
            )
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        {"segment.condition.event_count"},
    )
