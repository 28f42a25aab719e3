"""identity.persons_unmerged: the restored person leads to itself again, takes back the occurrences of the
events that named it, and both persons' memberships follow; profile's change of the restored person, listing
the events it moved back, moves their occurrences too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2 as profile_events
from omni.segmentation.v1 import events_pb2
from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.bus import unpack

from .builders import cart, event_count, trait
from .support import EventLog, Segmentation, eventually, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


async def _occurrences(segmentation: Segmentation, person_id: str) -> int:
    return int(
        await segmentation.scalar(
            "SELECT count(*) FROM event_occurrences WHERE person_id = :p", p=uuid.UUID(person_id)
        )
    )


async def _leads_to(segmentation: Segmentation, person_id: str) -> uuid.UUID | None:
    value = await segmentation.scalar(
        "SELECT survivor_id FROM person_lineage WHERE person_id = :p", p=uuid.UUID(person_id)
    )
    return value if isinstance(value, uuid.UUID) else None


async def _staged(segmentation: Segmentation, *person_ids: str) -> int:
    """How many enter/exit events segmentation staged about these persons (its outbox keeps them)."""
    return int(
        await segmentation.scalar(
            "SELECT count(*) FROM outbox WHERE person_id = ANY(:ids)", ids=list(person_ids)
        )
    )


def _names(envelopes: list, message: type) -> list[str]:  # type: ignore[type-arg]
    return [unpack(e, message).segment_name for e in envelopes]


def _event_id(tracked: envelope_pb2.Envelope) -> str:
    return unpack(tracked, profile_events.EventTrackedEvent).event.id


async def _events_moved(
    segmentation: Segmentation, person_id: str, moved_from: str, *event_ids: str, cart: int = 0
) -> envelope_pb2.Envelope:
    """Publish profile's change of a restored person after an unmerge: its cart, and the events profile
    moved to it from moved_from."""
    payload = profile_events.ProfileChangedEvent(
        person_id=person_id,
        changed=["events", "cart", "computed_traits"],
        moved_event_ids=list(event_ids),
        moved_from_person_id=moved_from,
    )
    if cart:
        payload.cart.items.add(product_id="sku-1", quantity=cart)
    return await segmentation.publish(
        payload, event_type="profile.profile_changed", producer="profile", person_id=person_id
    )


async def _occurrence_origin(segmentation: Segmentation, person_id: str, event_id: str) -> uuid.UUID | None:
    value = await segmentation.scalar(
        "SELECT origin_person_id FROM event_occurrences WHERE person_id = :p AND event_id = :e",
        p=uuid.UUID(person_id),
        e=event_id,
    )
    return value if isinstance(value, uuid.UUID) else None


async def test_unmerge_gives_the_restored_person_its_events_and_memberships_back(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold-" + marker))
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    regulars = await segmentation.create(unique("regulars"), event_count(visit, 3600, pb.COMPARISON_GTE, 3))
    survivor, restored = person(), person()
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    await segmentation.consumed(
        await segmentation.profile_changed(survivor, traits={"plan": "gold-" + marker}),
        await segmentation.track(survivor, "page_viewed"),
        await segmentation.track(restored, visit, occurred_at=earlier),
    )
    assert await segmentation.segments_of(survivor) == {gold.name}
    assert await segmentation.segments_of(restored) == {visitors.name}

    # The wrong merge: the survivor holds the visit now, and a late event naming the merged id joins it.
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    await segmentation.consumed(await segmentation.track(restored, visit))
    assert await segmentation.segments_of(survivor) == {gold.name, visitors.name}
    assert await _occurrences(segmentation, survivor) == 3

    await segmentation.consumed(await segmentation.unmerged(survivor, restored))
    assert await segmentation.segments_of(survivor) == {gold.name}
    assert await segmentation.segments_of(restored) == {visitors.name}
    assert _names(await events.wait_for(EXITED, survivor), events_pb2.PersonExitedSegmentEvent) == [
        visitors.name
    ]
    # Entered once before the merge, once again now.
    assert _names(
        await events.wait_for(ENTERED, restored, count=2), events_pb2.PersonEnteredSegmentEvent
    ) == [visitors.name, visitors.name]
    assert await _occurrences(segmentation, survivor) == 1
    assert await _occurrences(segmentation, restored) == 2
    assert await _leads_to(segmentation, restored) is None
    # The survivor's last visit went with the visits; traits stay with the survivor.
    last_visits = await segmentation.rows(
        "SELECT person_id FROM person_last_events WHERE event_type = :t", t=visit
    )
    assert [row.person_id for row in last_visits] == [uuid.UUID(restored)]
    traits = await segmentation.rows(
        "SELECT person_id, traits FROM persons WHERE person_id = ANY(:ids) ORDER BY person_id",
        ids=[uuid.UUID(survivor), uuid.UUID(restored)],
    )
    assert {row.person_id: row.traits for row in traits} == {
        uuid.UUID(survivor): {"plan": "gold-" + marker},
        uuid.UUID(restored): {},
    }

    # Later events of the restored person count for it alone.
    await segmentation.consumed(await segmentation.track(restored, visit))
    assert await _occurrences(segmentation, restored) == 3
    assert await _occurrences(segmentation, survivor) == 1
    assert await segmentation.segments_of(restored) == {visitors.name, regulars.name}
    assert await segmentation.segments_of(survivor) == {gold.name}


async def test_persons_merged_into_the_restored_one_lead_to_it_again(
    segmentation: Segmentation,
) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    survivor, restored, earlier, later = person(), person(), person(), person()
    await segmentation.consumed(
        await segmentation.track(earlier, visit),
        await segmentation.track(later, "page_viewed"),
        await segmentation.track(survivor, "page_viewed"),
    )
    await segmentation.consumed(await segmentation.merged(restored, earlier))
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    # Merged into the survivor after the undone merge: it stays there.
    await segmentation.consumed(await segmentation.merged(survivor, later))
    assert await _occurrences(segmentation, survivor) == 3

    await segmentation.consumed(await segmentation.unmerged(survivor, restored, earlier))
    assert await _leads_to(segmentation, earlier) == uuid.UUID(restored)
    assert await _leads_to(segmentation, later) == uuid.UUID(survivor)
    assert await _leads_to(segmentation, restored) is None
    assert await _occurrences(segmentation, restored) == 1
    assert await _occurrences(segmentation, survivor) == 2
    assert await segmentation.segments_of(restored) == {visitors.name}
    assert await segmentation.segments_of(survivor) == set()

    # An event naming the earlier person now counts for the restored one.
    await segmentation.consumed(await segmentation.track(earlier, visit))
    assert await _occurrences(segmentation, restored) == 2
    assert await _occurrences(segmentation, survivor) == 2


async def test_a_redelivered_unmerge_changes_nothing(segmentation: Segmentation) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    survivor, restored = person(), person()
    await segmentation.consumed(
        await segmentation.track(survivor, "page_viewed"), await segmentation.track(restored, visit)
    )
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    unmerge = await segmentation.unmerged(survivor, restored)
    await segmentation.consumed(unmerge)
    await segmentation.consumed(await segmentation.track(restored, visit))
    staged = await _staged(segmentation, survivor, restored)

    # The same event again (a redelivery), and the same unmerge announced anew.
    await segmentation.redeliver(unmerge)
    await segmentation.consumed(await segmentation.unmerged(survivor, restored))
    assert await _occurrences(segmentation, restored) == 2
    assert await _occurrences(segmentation, survivor) == 1
    assert await _leads_to(segmentation, restored) is None
    assert await segmentation.segments_of(restored) == {visitors.name}
    assert await segmentation.segments_of(survivor) == set()
    assert await _staged(segmentation, survivor, restored) == staged


async def test_an_unmerge_of_persons_segmentation_does_not_hold_as_merged_changes_nothing(
    segmentation: Segmentation,
) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    known, stranger, unheard_of, also_unheard_of = person(), person(), person(), person()
    await segmentation.consumed(await segmentation.track(known, visit))
    staged = await _staged(segmentation, known, stranger, unheard_of, also_unheard_of)

    await segmentation.consumed(
        # Neither person ever seen.
        await segmentation.unmerged(unheard_of, stranger, also_unheard_of),
        # A known survivor, but the restored person was never merged into it here.
        await segmentation.unmerged(known, unheard_of),
        # Ids that are not person ids at all.
        await segmentation.unmerged("not-a-person", known),
    )
    ids = [uuid.UUID(p) for p in (stranger, unheard_of, also_unheard_of)]
    assert await segmentation.scalar("SELECT count(*) FROM persons WHERE person_id = ANY(:ids)", ids=ids) == 0
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM person_lineage WHERE person_id = ANY(:ids) OR survivor_id = ANY(:ids)",
            ids=[*ids, uuid.UUID(known)],
        )
        == 0
    )
    assert await _occurrences(segmentation, known) == 1
    assert await segmentation.segments_of(known) == {visitors.name}
    assert await _staged(segmentation, known, stranger, unheard_of, also_unheard_of) == staged


async def test_an_unmerge_naming_another_survivor_splits_from_where_segmentation_merged(
    segmentation: Segmentation,
) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    survivor, restored, elsewhere = person(), person(), person()
    await segmentation.consumed(await segmentation.track(restored, visit))
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    assert await segmentation.segments_of(survivor) == {visitors.name}

    await segmentation.consumed(await segmentation.unmerged(elsewhere, restored))
    assert await _leads_to(segmentation, restored) is None
    assert await _occurrences(segmentation, restored) == 1
    assert await _occurrences(segmentation, survivor) == 0
    assert await segmentation.segments_of(restored) == {visitors.name}
    assert await segmentation.segments_of(survivor) == set()
    assert (
        await segmentation.scalar("SELECT count(*) FROM persons WHERE person_id = :p", p=uuid.UUID(elsewhere))
        == 0
    )


async def test_the_events_profile_moved_back_follow_its_change(
    segmentation: Segmentation, events: EventLog
) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    shoppers = await segmentation.create(unique("shoppers"), cart(pb.COMPARISON_GTE, 1))
    # Other tests' cart segments match too: only this test's are looked at.
    mine = {visitors.name, shoppers.name}
    survivor, restored = person(), person()
    await segmentation.consumed(
        await segmentation.track(survivor, "page_viewed"), await segmentation.track(restored, "page_viewed")
    )
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    # After the merge identity resolves the restored customer's identifiers to the survivor: her visit
    # names the survivor, which enters the segment through it.
    her_visit = await segmentation.track(survivor, visit)
    await segmentation.consumed(her_visit)
    assert await segmentation.segments_of(survivor) == {visitors.name}

    # The unmerge alone cannot tell the visit was hers: it stays with the survivor.
    await segmentation.consumed(await segmentation.unmerged(survivor, restored))
    assert await segmentation.segments_of(survivor) == {visitors.name}
    assert await _occurrences(segmentation, restored) == 1

    # Profile moved it back (with her first event, already here, and one segmentation never saw).
    change = await _events_moved(segmentation, restored, survivor, _event_id(her_visit), "evt-unseen", cart=2)
    await segmentation.consumed(change)
    assert await segmentation.segments_of(survivor) == set()
    assert await segmentation.segments_of(restored) & mine == mine
    assert await _occurrences(segmentation, survivor) == 1
    assert await _occurrences(segmentation, restored) == 2
    assert await _occurrence_origin(segmentation, restored, _event_id(her_visit)) is None
    assert _names(await events.wait_for(EXITED, survivor), events_pb2.PersonExitedSegmentEvent) == [
        visitors.name
    ]

    async def entered_both() -> bool:
        return mine <= set(_names(events.of(ENTERED, restored), events_pb2.PersonEnteredSegmentEvent))

    await eventually(entered_both)
    # The survivor's last visit went with it.
    last_visits = await segmentation.rows(
        "SELECT person_id FROM person_last_events WHERE event_type = :t", t=visit
    )
    assert [row.person_id for row in last_visits] == [uuid.UUID(restored)]
    staged = await _staged(segmentation, survivor, restored)

    # The same change announced anew finds nothing left to move, and announces nothing.
    await segmentation.consumed(
        await _events_moved(segmentation, restored, survivor, _event_id(her_visit), cart=2)
    )
    assert await _occurrences(segmentation, survivor) == 1
    assert await _occurrences(segmentation, restored) == 2
    assert await _staged(segmentation, survivor, restored) == staged
    assert await segmentation.segments_of(restored) & mine == mine


async def test_events_moved_to_a_person_merged_since_go_where_it_leads(segmentation: Segmentation) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    survivor, restored, later = person(), person(), person()
    await segmentation.consumed(
        await segmentation.track(restored, "page_viewed"), await segmentation.track(later, "page_viewed")
    )
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    her_visit = await segmentation.track(survivor, visit)
    await segmentation.consumed(her_visit)
    await segmentation.consumed(await segmentation.unmerged(survivor, restored))
    # Identity merged her into another person before profile's change arrived here.
    await segmentation.consumed(await segmentation.merged(later, restored))

    await segmentation.consumed(await _events_moved(segmentation, restored, survivor, _event_id(her_visit)))
    assert await segmentation.segments_of(survivor) == set()
    assert await segmentation.segments_of(later) == {visitors.name}
    # It counts for the person she leads to, as an event of hers: undoing that merge gives it back to her.
    assert await _occurrence_origin(segmentation, later, _event_id(her_visit)) == uuid.UUID(restored)
    await segmentation.consumed(await segmentation.unmerged(later, restored))
    assert await segmentation.segments_of(restored) == {visitors.name}
    assert await segmentation.segments_of(later) == set()


async def test_moved_events_without_whose_they_were_move_nothing(segmentation: Segmentation) -> None:
    marker = uuid.uuid4().hex[:8]
    visit = f"visit_{marker}"
    visitors = await segmentation.create(unique("visitors"), event_count(visit, 3600, pb.COMPARISON_GTE, 1))
    shoppers = await segmentation.create(unique("shoppers"), cart(pb.COMPARISON_GTE, 1))
    survivor, restored = person(), person()
    await segmentation.consumed(await segmentation.track(restored, "page_viewed"))
    await segmentation.consumed(await segmentation.merged(survivor, restored))
    her_visit = await segmentation.track(survivor, visit)
    await segmentation.consumed(her_visit)
    await segmentation.consumed(await segmentation.unmerged(survivor, restored))

    for moved_from in ("", "not-a-person"):
        await segmentation.consumed(
            await _events_moved(segmentation, restored, moved_from, _event_id(her_visit), cart=1)
        )
    assert await segmentation.segments_of(survivor) == {visitors.name}
    assert await _occurrences(segmentation, survivor) == 1
    # The rest of the change applies.
    assert shoppers.name in await segmentation.segments_of(restored)
    assert visitors.name not in await segmentation.segments_of(restored)
