"""First occurrences: "new customer" (first order in the last 14 days) and "first seen" (any event), live, by
the clock when the window passes, across a merge and its unmerge, explained, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details

from .builders import seconds
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"
DAY = 86_400


def first(event_type: str, comparison: int, age_s: float | None) -> pb.Condition:
    condition = pb.FirstEventCondition(event_type=event_type, comparison=comparison)  # type: ignore[arg-type]
    if age_s is not None:
        condition.age.CopyFrom(seconds(age_s))
    return pb.Condition(first_event=condition)


async def test_new_customers_and_first_seen(segmentation: Segmentation, events: EventLog) -> None:
    order = unique("order").replace("-", "_")
    new = await segmentation.create(unique("new-customers"), first(order, pb.COMPARISON_LTE, 14 * DAY))
    now = datetime.now(UTC)
    newcomer, regular, lapsing = person(), person(), person()
    await segmentation.consumed(
        await segmentation.track(regular, order, occurred_at=now - timedelta(days=30)),
        await segmentation.track(regular, order),
        await segmentation.track(newcomer, order),
        # Fourteen days old in two seconds: the clock takes the person out then.
        await segmentation.track(lapsing, order, occurred_at=now - timedelta(days=14) + timedelta(seconds=2)),
    )
    await events.wait_for(ENTERED, newcomer)
    await events.wait_for(ENTERED, lapsing)
    assert new.name not in await segmentation.segments_of(regular)
    await events.wait_for(EXITED, lapsing, timeout_s=10)

    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=new.id, person_id=regular)
    )
    assert answer.condition.kind == "first_event" and not answer.condition.holds
    assert answer.condition.summary == f"the first {order} was 30.0d ago (≤ 14d)"
    assert answer.condition.HasField("last_event_time")

    seen = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=first("", pb.COMPARISON_GTE, 29 * DAY), sample_size=100)
    )
    assert regular in seen.sample_person_ids and newcomer not in seen.sample_person_ids


async def test_a_merge_brings_an_older_first_and_the_unmerge_takes_it_back(
    segmentation: Segmentation, events: EventLog
) -> None:
    order = unique("buy").replace("-", "_")
    new = await segmentation.create(unique("new-buyers"), first(order, pb.COMPARISON_LTE, 14 * DAY))
    survivor, merged = person(), person()
    await segmentation.consumed(
        await segmentation.track(survivor, order),
        await segmentation.track(merged, order, occurred_at=datetime.now(UTC) - timedelta(days=20)),
    )
    await events.wait_for(ENTERED, survivor)
    await segmentation.merged(survivor, merged)
    await events.wait_for(EXITED, survivor)
    await segmentation.unmerged(survivor, merged)
    await events.wait_for(ENTERED, survivor, count=2)
    assert new.name in await segmentation.segments_of(survivor)
    assert new.name not in await segmentation.segments_of(merged)


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (first("order_completed", pb.COMPARISON_LTE, None), {"segment.condition.first_event.age"}),
        (first("product_added", pb.COMPARISON_LTE, 60), {"segment.condition.first_event.event_type"}),
        (
            first("Order Completed", pb.COMPARISON_EXISTS, 60),
            {
                "segment.condition.first_event.event_type",
                "segment.condition.first_event.comparison",
            },
        ),
    ],
)
async def test_bad_first_events(
    segmentation: Segmentation, condition: pb.Condition, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-first"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
