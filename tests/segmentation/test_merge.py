"""identity.persons_merged: facts and events move to the survivor, the merged persons' memberships end."""

from __future__ import annotations

import uuid

from omni.segmentation.v1 import events_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.bus import unpack

from .builders import all_of, event_count, trait
from .support import EventLog, Segmentation, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


async def test_merge_moves_facts_and_events_and_ends_the_merged_memberships(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold-" + marker))
    regular = await segmentation.create(
        unique("regular"),
        all_of(
            trait("plan", pb.COMPARISON_EQ, "gold-" + marker),
            event_count("store_visited", 3600, pb.COMPARISON_GTE, 2),
        ),
    )
    survivor, merged = person(), person()
    await segmentation.consumed(
        await segmentation.profile_changed(merged, traits={"plan": "gold-" + marker, "city": "Oslo"}),
        await segmentation.track(merged, "store_visited"),
        await segmentation.profile_changed(survivor, traits={"name": "Ada"}),
        await segmentation.track(survivor, "store_visited"),
    )
    assert await segmentation.segments_of(merged) == {gold.name}
    assert await segmentation.segments_of(survivor) == set()

    merge = await segmentation.merged(survivor, merged)
    exited = await events.wait_for(EXITED, merged)
    assert [unpack(e, events_pb2.PersonExitedSegmentEvent).segment_name for e in exited] == [gold.name]
    entered = await events.wait_for(ENTERED, survivor, count=2)
    assert {unpack(e, events_pb2.PersonEnteredSegmentEvent).segment_name for e in entered} == {
        gold.name,
        regular.name,
    }
    await segmentation.consumed(merge)
    assert await segmentation.segments_of(merged) == set()
    assert await segmentation.segments_of(survivor) == {gold.name, regular.name}

    merged_id, survivor_id = uuid.UUID(merged), uuid.UUID(survivor)
    assert await segmentation.scalar("SELECT count(*) FROM persons WHERE person_id = :p", p=merged_id) == 0
    assert (
        await segmentation.scalar("SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=merged_id)
        == 0
    )
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=survivor_id
        )
        == 2
    )
    traits = await segmentation.scalar("SELECT traits FROM persons WHERE person_id = :p", p=survivor_id)
    assert traits == {"name": "Ada", "plan": "gold-" + marker, "city": "Oslo"}

    # The same merge again changes nothing; a late event about the merged person lands on the survivor.
    again = await segmentation.merged(survivor, merged)
    late = await segmentation.track(merged, "store_visited")
    await segmentation.consumed(again, late)
    assert await segmentation.scalar("SELECT count(*) FROM persons WHERE person_id = :p", p=merged_id) == 0
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=survivor_id
        )
        == 3
    )
    assert len(events.of(EXITED, merged)) == 1
    assert len(events.of(EXITED, survivor)) == 0


async def test_a_late_profile_change_of_a_merged_person_is_ignored(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold-" + marker))
    survivor, merged = person(), person()
    await segmentation.consumed(await segmentation.profile_changed(survivor, traits={"plan": "free"}))
    await segmentation.consumed(await segmentation.merged(survivor, merged))
    await segmentation.consumed(await segmentation.profile_changed(merged, traits={"plan": "gold-" + marker}))
    assert await segmentation.segments_of(survivor) == set()
    assert gold.name not in await segmentation.segments_of(merged)
    assert (
        await segmentation.scalar("SELECT count(*) FROM persons WHERE person_id = :p", p=uuid.UUID(merged))
        == 0
    )


async def test_merging_persons_segmentation_never_saw_is_harmless(segmentation: Segmentation) -> None:
    survivor, merged = person(), person()
    await segmentation.consumed(await segmentation.merged(survivor, merged))
    assert await segmentation.scalar(
        "SELECT survivor_id FROM person_lineage WHERE person_id = :p", p=uuid.UUID(merged)
    ) == uuid.UUID(survivor)
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM persons WHERE person_id = ANY(:ids)",
            ids=[uuid.UUID(survivor), uuid.UUID(merged)],
        )
        == 0
    )


async def test_chained_merges_lead_to_the_last_survivor(segmentation: Segmentation) -> None:
    first, second, third = person(), person(), person()
    await segmentation.consumed(await segmentation.track(first, "page_viewed"))
    await segmentation.consumed(await segmentation.merged(second, first))
    await segmentation.consumed(await segmentation.merged(third, second))
    rows = await segmentation.rows(
        "SELECT person_id, survivor_id FROM person_lineage WHERE person_id = ANY(:ids)",
        ids=[uuid.UUID(first), uuid.UUID(second)],
    )
    assert {row.survivor_id for row in rows} == {uuid.UUID(third)}
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=uuid.UUID(third)
        )
        == 1
    )
