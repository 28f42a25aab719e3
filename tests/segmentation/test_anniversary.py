"""Yearly dates ("birthday within 7 days"): when the anniversary of a date trait is near, across year ends
and 29 February, when it next changes, live, explained, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_segmentation.rules import Anniversary, PersonFacts, evaluate, next_change
from omni_segmentation.values import next_anniversary

from .builders import all_of, seconds, trait
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
WEEK = Anniversary("birthdate", timedelta(days=7))


def born(value: str) -> PersonFacts:
    return PersonFacts(traits={"birthdate": value})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_birthdays_within_a_week() -> None:
    now = at("2027-03-01T12:00:00")
    assert evaluate(WEEK, born("1990-03-05"), now)
    assert evaluate(WEEK, born("1990-03-01"), now)  # today, until the day ends
    assert not evaluate(WEEK, born("1990-02-28"), now)  # past: next year's is far
    assert not evaluate(WEEK, born("1990-03-09"), now)
    assert not evaluate(WEEK, born("not a date"), now) and not evaluate(WEEK, PersonFacts(), now)
    # Across the year's end, and 29 February in a common year.
    assert evaluate(WEEK, born("1990-01-02"), at("2027-12-29T00:00:00"))
    assert next_anniversary(at("2000-02-29T00:00:00"), now) == at("2028-02-29T00:00:00")
    assert next_anniversary(at("2000-02-29T00:00:00"), at("2027-01-10T00:00:00")) == at("2027-02-28T00:00:00")
    # It starts to hold a week before the day and stops when the day ends.
    assert next_change(WEEK, born("1990-03-20"), now) == at("2027-03-13T00:00:00")
    assert next_change(WEEK, born("1990-03-05"), now) == at("2027-03-06T00:00:00")


def anniversary(name: str, within_s: float | None) -> pb.Condition:
    condition = pb.AnniversaryCondition(trait=name)
    if within_s is not None:
        condition.within.CopyFrom(seconds(within_s))
    return pb.Condition(anniversary=condition)


async def test_birthday_this_week_live(segmentation: Segmentation, events: EventLog) -> None:
    tag = unique("birthdays")
    today = datetime.now(UTC).date()
    soon, later = person(), person()
    for someone, day in ((soon, today + timedelta(days=3)), (later, today + timedelta(days=30))):
        await segmentation.consumed(
            await segmentation.profile_changed(
                someone,
                traits={"tag": tag, "birthdate": day.replace(year=1992).isoformat()},
                changed=("traits",),
            )
        )
    week = await segmentation.create(
        tag, all_of(trait("tag", pb.COMPARISON_EQ, tag), anniversary("birthdate", 7 * 86_400))
    )
    await events.wait_for(ENTERED, soon, timeout_s=10)
    assert week.name not in await segmentation.segments_of(later)
    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=week.id, person_id=later)
    )
    node = answer.condition.children[1]
    assert (node.kind, node.holds) == ("anniversary", False)
    assert node.summary.startswith(
        f"birthdate's anniversary is on {(today + timedelta(days=30)).isoformat()}"
    )


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (anniversary("birthdate", None), {"segment.condition.anniversary.within"}),
        (
            anniversary("", 367 * 86_400),
            {"segment.condition.anniversary.trait", "segment.condition.anniversary.within"},
        ),
    ],
)
async def test_bad_anniversaries(
    segmentation: Segmentation, condition: pb.Condition, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-yearly"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
