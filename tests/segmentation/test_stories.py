"""The marketer's stories told through the consumer, as profile announces them: win-back ("no purchase in
30 days", from the computed trait last_purchase_at) and "in the app at least 5 times this week but never
bought"; each previewed, then created, then explained."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from omni.common.v1 import common_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb

from .builders import all_of, not_, seconds
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
DAY = 86_400


async def test_win_back(segmentation: Segmentation, events: EventLog) -> None:
    lapsed_buyer, recent_buyer = person(), person()
    now = datetime.now(UTC)
    for someone, bought in (
        (lapsed_buyer, now - timedelta(days=40)),
        (recent_buyer, now - timedelta(days=3)),
    ):
        await segmentation.consumed(
            await segmentation.profile_changed(
                someone,
                computed_traits={
                    "last_purchase_at": bought.isoformat().replace("+00:00", "Z"),
                    "orders_30d": 0,
                },
                changed=("computed_traits",),
            )
        )
    condition = pb.Condition(
        trait_age=pb.TraitAgeCondition(
            trait="last_purchase_at", comparison=pb.COMPARISON_GT, age=seconds(30 * DAY)
        )
    )
    preview = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=condition, sample_size=100)
    )
    assert lapsed_buyer in preview.sample_person_ids and recent_buyer not in preview.sample_person_ids
    win_back = await segmentation.create(unique("win-back"), condition)
    await events.wait_for(ENTERED, lapsed_buyer, timeout_s=10)
    assert win_back.name not in await segmentation.segments_of(recent_buyer)


async def test_in_the_app_five_times_this_week_but_never_bought(
    segmentation: Segmentation, events: EventLog
) -> None:
    browser, buyer, web_only = person(), person(), person()
    sent = []
    for _ in range(5):
        sent.append(await segmentation.track(browser, "app_opened", channel=common_pb2.CHANNEL_APP))
        sent.append(await segmentation.track(buyer, "app_opened", channel=common_pb2.CHANNEL_APP))
        sent.append(await segmentation.track(web_only, "app_opened", channel=common_pb2.CHANNEL_WEB))
    sent.append(
        await segmentation.track(
            buyer, "order_completed", occurred_at=datetime.now(UTC) - timedelta(days=200)
        )
    )
    await segmentation.consumed(*sent)
    condition = all_of(
        pb.Condition(
            event_count=pb.EventCountCondition(
                event_type="app_opened",
                window=seconds(7 * DAY),
                comparison=pb.COMPARISON_GTE,
                count=5,
                channels=[common_pb2.CHANNEL_APP],
            )
        ),
        not_(
            pb.Condition(
                first_event=pb.FirstEventCondition(
                    event_type="order_completed", comparison=pb.COMPARISON_GTE, age=seconds(0)
                )
            )
        ),
    )
    segment = await segmentation.create(unique("browsers-not-buyers"), condition)
    await events.wait_for(ENTERED, browser, timeout_s=10)
    assert segment.name not in await segmentation.segments_of(buyer)
    assert segment.name not in await segmentation.segments_of(web_only)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=segment.id, person_id=buyer)
    )
    opened, never = answer.condition.children
    assert (opened.holds, opened.count) == (True, 5)
    assert (never.holds, never.children[0].summary) == (
        False,
        "the first order_completed was 200.0d ago (≥ 0s)",
    )
