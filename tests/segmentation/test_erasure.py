"""identity.person_forgotten and profile.person_erased: every row about the forgotten ids goes, silently."""

from __future__ import annotations

import uuid

from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2 as profile_events
from omni.segmentation.v1 import segmentation_pb2 as pb

from .builders import event_count, trait
from .support import EventLog, Segmentation, person, unique

EXITED = "segmentation.person_exited_segment"
PER_PERSON_TABLES = ("persons", "event_occurrences", "person_last_events", "memberships")


async def held(segmentation: Segmentation, person_id: str) -> dict[str, int]:
    """How many rows of each per-person table (and merge aliases either way) name the person."""
    pid = uuid.UUID(person_id)
    counts = {
        table: await segmentation.scalar(f"SELECT count(*) FROM {table} WHERE person_id = :p", p=pid)
        for table in PER_PERSON_TABLES
    }
    # A forgotten id keeps a tombstone, which leads nowhere.
    counts["aliases"] = await segmentation.scalar(
        "SELECT count(*) FROM person_lineage WHERE (person_id = :p AND survivor_id IS NOT NULL) OR survivor_id = :p",
        p=pid,
    )
    counts["scheduled_jobs"] = await segmentation.scalar(
        "SELECT count(*) FROM scheduled_jobs WHERE key = :p", p=person_id
    )
    return counts


async def test_forgetting_deletes_every_row_of_every_id_and_publishes_no_exit(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold-" + marker))
    await segmentation.create(
        unique("due"), event_count("store_visited", 3600, pb.COMPARISON_GTE, 1)
    )  # a window makes the clock schedule a next check
    survivor, merged, other = person(), person(), person()
    for someone in (survivor, merged, other):
        await segmentation.consumed(
            await segmentation.profile_changed(someone, traits={"plan": "gold-" + marker}, cart={"tea": 2}),
            await segmentation.track(someone, "store_visited"),
        )
    await segmentation.consumed(await segmentation.merged(survivor, merged))
    assert gold.name in await segmentation.segments_of(survivor)
    before = await held(segmentation, survivor)
    assert all(before.values()), before
    assert await segmentation.scalar(
        "SELECT next_check_at IS NOT NULL FROM persons WHERE person_id = :p", p=uuid.UUID(survivor)
    )
    other_before = await held(segmentation, other)
    exits_before = len(events.of(EXITED))

    forgotten = identity_events.PersonForgottenEvent(
        person_id=survivor, forgotten_person_ids=[survivor, merged], erasure_id=str(uuid.uuid4())
    )
    envelope = await segmentation.publish(
        forgotten, event_type="identity.person_forgotten", producer="identity", person_id=survivor
    )
    await segmentation.consumed(envelope)

    for someone in (survivor, merged):
        assert await held(segmentation, someone) == dict.fromkeys(
            [*PER_PERSON_TABLES, "aliases", "scheduled_jobs"], 0
        )
    assert await held(segmentation, other) == other_before
    assert gold.name in await segmentation.segments_of(other)
    assert len(events.of(EXITED)) == exits_before

    # Forgetting again (a new envelope), or a person never seen, changes nothing and does not fail.
    again = await segmentation.publish(
        forgotten, event_type="identity.person_forgotten", producer="identity", person_id=survivor
    )
    stranger = identity_events.PersonForgottenEvent(person_id=person(), forgotten_person_ids=["not-a-uuid"])
    unknown = await segmentation.publish(
        stranger, event_type="identity.person_forgotten", producer="identity"
    )
    await segmentation.consumed(again, unknown)
    assert await held(segmentation, other) == other_before


async def test_profile_person_erased_deletes_the_person_and_its_merged_ids(
    segmentation: Segmentation, events: EventLog
) -> None:
    survivor, merged, other = person(), person(), person()
    for someone in (survivor, merged, other):
        await segmentation.consumed(
            await segmentation.profile_changed(someone, traits={"city": "Oslo"}),
            await segmentation.track(someone, "page_viewed"),
        )
    await segmentation.consumed(await segmentation.merged(survivor, merged))
    other_before = await held(segmentation, other)

    erased = profile_events.PersonErasedEvent(person_id=survivor, merged_person_ids=[merged])
    envelope = await segmentation.publish(
        erased, event_type="profile.person_erased", producer="profile", person_id=survivor
    )
    await segmentation.consumed(envelope)

    for someone in (survivor, merged):
        assert sum((await held(segmentation, someone)).values()) == 0
    assert await held(segmentation, other) == other_before


async def test_events_about_a_forgotten_person_arriving_later_bring_nothing_back(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold-" + marker))
    survivor, merged = person(), person()
    await segmentation.consumed(await segmentation.merged(survivor, merged))
    forgotten = identity_events.PersonForgottenEvent(
        person_id=survivor, forgotten_person_ids=[survivor, merged], erasure_id=str(uuid.uuid4())
    )
    await segmentation.consumed(
        await segmentation.publish(
            forgotten, event_type="identity.person_forgotten", producer="identity", person_id=survivor
        )
    )

    # Staged by profile before the erasure reached it, delivered after it.
    late = [
        await segmentation.profile_changed(someone, traits={"plan": "gold-" + marker})
        for someone in (survivor, merged)
    ]
    late += [await segmentation.track(someone, "page_viewed") for someone in (survivor, merged)]
    await segmentation.consumed(*late)

    for someone in (survivor, merged):
        assert sum((await held(segmentation, someone)).values()) == 0
        assert gold.name not in await segmentation.segments_of(someone)
        assert events.of("segmentation.person_entered_segment", someone) == []
