"""Live membership from real profile events on JetStream: enter/exit events, the clock, traces, backfill."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2 as profile_events
from omni.segmentation.v1 import events_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.bus import unpack

from .builders import abandoned_cart, event_count, trait
from .support import EventLog, Segmentation, eventually, person, trace_id_of, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


def entered_names(envelopes: list[envelope_pb2.Envelope]) -> list[str]:
    """The segment names of entered envelopes."""
    return [unpack(e, events_pb2.PersonEnteredSegmentEvent).segment_name for e in envelopes]


def exited_names(envelopes: list[envelope_pb2.Envelope]) -> list[str]:
    """The segment names of exited envelopes."""
    return [unpack(e, events_pb2.PersonExitedSegmentEvent).segment_name for e in envelopes]


async def test_trait_change_enters_and_exits(segmentation: Segmentation, events: EventLog) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    someone = person()
    await segmentation.profile_changed(someone, traits={"plan": "gold"})
    entered = await events.wait_for(ENTERED, someone)
    payload = unpack(entered[0], events_pb2.PersonEnteredSegmentEvent)
    assert (payload.person_id, payload.segment_id, payload.segment_name) == (someone, gold.id, gold.name)
    assert entered[0].producer == "segmentation"
    assert gold.name in await segmentation.segments_of(someone)
    stored = await segmentation.rows(
        "SELECT entered_at FROM memberships WHERE person_id = :p AND segment_id = :s",
        p=uuid.UUID(someone),
        s=uuid.UUID(gold.id),
    )
    assert len(stored) == 1

    await segmentation.profile_changed(someone, traits={"plan": "silver"})
    exited = await events.wait_for(EXITED, someone)
    assert exited_names(exited) == [gold.name]
    assert gold.name not in await segmentation.segments_of(someone)
    assert len(events.of(ENTERED, someone)) == 1


async def test_event_counts_within_a_window(segmentation: Segmentation, events: EventLog) -> None:
    busy = await segmentation.create(unique("busy"), event_count("page_viewed", 600, pb.COMPARISON_GTE, 2))
    someone = person()
    old = await segmentation.track(someone, "page_viewed", occurred_at=datetime.now(UTC) - timedelta(hours=1))
    recent = await segmentation.track(someone, "page_viewed")
    await segmentation.consumed(old, recent)
    assert busy.name not in await segmentation.segments_of(someone)  # the old view is outside the window
    await segmentation.track(someone, "page_viewed")
    await events.wait_for(ENTERED, someone)
    assert busy.name in await segmentation.segments_of(someone)


async def test_events_of_a_non_latin_type_count(segmentation: Segmentation, events: EventLog) -> None:
    """Profile records "Товар добавлен" as товар_добавлен: a rule can name it and counts it."""
    adding = await segmentation.create(
        unique("adding"), event_count("товар_добавлен", 600, pb.COMPARISON_GTE, 1)
    )
    someone = person()
    await segmentation.track(someone, "товар_добавлен")
    await events.wait_for(ENTERED, someone)
    assert adding.name in await segmentation.segments_of(someone)


async def test_the_clock_enters_an_abandoned_cart_in_the_causing_trace(
    segmentation: Segmentation, events: EventLog
) -> None:
    abandoned = await segmentation.create(unique("abandoned-cart"), abandoned_cart(1))
    someone = person()
    trace_id = uuid.uuid4().hex
    added_at = datetime.now(UTC)
    changed = await segmentation.profile_changed(
        someone, cart={"sku-1": 2}, changed=("cart",), trace_id=trace_id
    )
    added = await segmentation.track(someone, "cart_item_added", occurred_at=added_at, trace_id=trace_id)
    await segmentation.consumed(changed, added)

    # Right after the add the person is not in yet, and the clock knows when to look again.
    next_check = await segmentation.scalar(
        "SELECT next_check_at FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
    )
    if next_check is not None:  # unless the clock was quicker than this test
        assert abs((next_check - (added_at + timedelta(seconds=1))).total_seconds()) < 0.001
        assert abandoned.name not in await segmentation.segments_of(someone)

    entered = await events.wait_for(ENTERED, someone)
    assert entered_names(entered) == [abandoned.name]
    assert entered[0].occurred_at.ToDatetime(tzinfo=UTC) >= added_at + timedelta(seconds=1)
    assert trace_id_of(entered[0]) == trace_id
    assert abandoned.name in await segmentation.segments_of(someone)
    assert (
        await segmentation.scalar(
            "SELECT next_check_at FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
        )
        is None
    )

    # Buying ends it: the order counts for the next hour.
    await segmentation.track(someone, "order_completed")
    exited = await events.wait_for(EXITED, someone)
    assert exited_names(exited) == [abandoned.name]


async def test_an_empty_cart_never_enters(segmentation: Segmentation, events: EventLog) -> None:
    abandoned = await segmentation.create(unique("abandoned-cart"), abandoned_cart(1))
    someone = person()
    added = await segmentation.track(someone, "cart_item_added")
    emptied = await segmentation.profile_changed(someone, cart={}, changed=("cart",))
    await segmentation.consumed(added, emptied)
    assert (
        await segmentation.scalar(
            "SELECT next_check_at FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
        )
        is None
    )
    await asyncio.sleep(1.3)
    assert abandoned.name not in await segmentation.segments_of(someone)
    assert events.of(ENTERED, someone) == []


async def test_a_new_segment_is_evaluated_for_persons_known_before(
    segmentation: Segmentation, events: EventLog
) -> None:
    tier = "vip-" + uuid.uuid4().hex[:6]
    early = [person() for _ in range(3)]
    await segmentation.consumed(
        *[await segmentation.profile_changed(p, traits={"tier": tier}) for p in early]
    )
    vip = await segmentation.create(unique("vip"), trait("tier", pb.COMPARISON_EQ, tier))
    for someone in early:
        assert entered_names(await events.wait_for(ENTERED, someone)) == [vip.name]
    await eventually(lambda: segmentation.scalar("SELECT count(*) = 0 FROM backfills"))


async def test_a_late_older_profile_change_is_ignored(segmentation: Segmentation, events: EventLog) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    someone = person()
    now = datetime.now(UTC)
    newer = await segmentation.profile_changed(someone, traits={"plan": "gold"}, occurred_at=now)
    older = await segmentation.profile_changed(
        someone, traits={"plan": "free"}, occurred_at=now - timedelta(seconds=5)
    )
    await segmentation.consumed(newer, older)
    assert gold.name in await segmentation.segments_of(someone)
    traits = await segmentation.scalar(
        "SELECT traits FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
    )
    assert traits == {"plan": "gold"}


async def test_the_same_event_twice_counts_once(segmentation: Segmentation, events: EventLog) -> None:
    once = await segmentation.create(unique("once"), event_count("coupon_used", 3600, pb.COMPARISON_EQ, 1))
    someone = person()
    first = await segmentation.track(someone, "coupon_used")
    await events.wait_for(ENTERED, someone)
    # The same event (same id) in a new envelope, as a producer retrying after a crash would send it.
    again = await segmentation.publish(
        unpack(first, profile_events.EventTrackedEvent),
        event_type="profile.event_tracked",
        producer="profile",
        person_id=someone,
    )
    await segmentation.consumed(again)
    assert once.name in await segmentation.segments_of(someone)
    assert events.of(EXITED, someone) == []


async def test_events_with_malformed_ids_are_skipped(segmentation: Segmentation) -> None:
    bad = await segmentation.profile_changed("not-a-person", traits={"plan": "gold"})
    someone = person()
    good = await segmentation.track(someone, "page_viewed")
    await segmentation.consumed(bad, good)
    known = await segmentation.scalar(
        "SELECT count(*) FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
    )
    assert known == 1
