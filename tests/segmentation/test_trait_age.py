"""Dates relative to now: the age of a time-valued trait or computed trait ("no purchase in the last 30
days"), live, by the clock when the moment passes, explained, and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_segmentation.rules import Comparison, PersonFacts, TraitAge, as_time, evaluate, next_change

from .builders import all_of, seconds, trait
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
DAY = 86_400
NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def aged(name: str, comparison: int, age_s: float | None) -> pb.Condition:
    condition = pb.TraitAgeCondition(trait=name, comparison=comparison)  # type: ignore[arg-type]
    if age_s is not None:
        condition.age.CopyFrom(seconds(age_s))
    return pb.Condition(trait_age=condition)


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def test_times_and_dates_are_read_and_the_flip_is_foreseen() -> None:
    assert as_time("2026-11-22T10:00:00Z") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert as_time("2026-11-22") == datetime(2026, 11, 22, tzinfo=UTC)
    assert as_time("2026-11-22T10:00:00+02:00") == datetime(2026, 11, 22, 8, tzinfo=UTC)
    assert as_time("soon") is None and as_time(20261122) is None and as_time(None) is None
    rule = TraitAge("last_purchase_at", Comparison.GT, timedelta(days=30))
    bought = NOW - timedelta(days=29)
    facts = PersonFacts(computed_traits={"last_purchase_at": rfc3339(bought)})
    assert not evaluate(rule, facts, NOW)
    flip = next_change(rule, facts, NOW)
    assert flip is not None and bought + timedelta(days=30) < flip <= bought + timedelta(
        days=30, microseconds=1
    )
    assert evaluate(rule, facts, flip)
    assert not evaluate(rule, PersonFacts(traits={"last_purchase_at": "never"}), NOW)


async def test_win_back_no_purchase_in_30_days(segmentation: Segmentation, events: EventLog) -> None:
    lapsed = await segmentation.create(unique("lapsed"), aged("last_purchase_at", pb.COMPARISON_GT, 30 * DAY))
    now = datetime.now(UTC)
    gone, recent, lapsing, never = person(), person(), person(), person()
    for someone, at in (
        (gone, now - timedelta(days=45)),
        (recent, now - timedelta(days=2)),
        # Lapses by time alone a couple of seconds from now: the clock takes the person in.
        (lapsing, now - timedelta(days=30) + timedelta(seconds=2)),
    ):
        await segmentation.profile_changed(
            someone, computed_traits={"last_purchase_at": rfc3339(at)}, changed=("computed_traits",)
        )
    await segmentation.profile_changed(never, traits={"plan": "gold"}, changed=("traits",))
    await events.wait_for(ENTERED, gone)
    await events.wait_for(ENTERED, lapsing, timeout_s=10)
    assert lapsed.name not in await segmentation.segments_of(recent)
    assert lapsed.name not in await segmentation.segments_of(never)

    answer = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=lapsed.id, person_id=recent)
    )
    assert answer.condition.kind == "trait_age" and not answer.condition.holds
    assert answer.condition.summary.startswith("last_purchase_at was 2.0d ago")
    assert answer.condition.summary.endswith("(> 30d)")


async def test_a_birthday_date_trait(segmentation: Segmentation, events: EventLog) -> None:
    tag = unique("adults")
    adult, minor = person(), person()
    for someone, born in (
        (adult, "1990-05-01"),
        (minor, (datetime.now(UTC) - timedelta(days=3000)).date().isoformat()),
    ):
        await segmentation.profile_changed(
            someone, traits={"tag": tag, "birthdate": born}, changed=("traits",)
        )
    adults = await segmentation.create(
        tag, all_of(trait("tag", pb.COMPARISON_EQ, tag), aged("birthdate", pb.COMPARISON_GTE, 18 * 365 * DAY))
    )
    await events.wait_for(ENTERED, adult, timeout_s=10)
    assert adults.name not in await segmentation.segments_of(minor)


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (aged("last_purchase_at", pb.COMPARISON_GT, None), {"segment.condition.trait_age.age"}),
        (
            aged("", pb.COMPARISON_EXISTS, 60),
            {"segment.condition.trait_age.trait", "segment.condition.trait_age.comparison"},
        ),
        (aged("x", pb.COMPARISON_GT, -1), {"segment.condition.trait_age.age"}),
        (aged("x", pb.COMPARISON_GT, 3153600001), {"segment.condition.trait_age.age"}),
    ],
)
async def test_bad_ages(segmentation: Segmentation, condition: pb.Condition, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-age"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
