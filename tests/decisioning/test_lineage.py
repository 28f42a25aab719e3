"""Identity's lineage as decisioning follows it: merges, unmerges (also of a person merged into one that was
merged later) and erasures, published on JetStream as identity publishes them, seen through Decide and the
journeys' send requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from omni.common.v1 import common_pb2 as c
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events

from .support import Decisioning
from .test_decide import create_offer, decide, membership, names, touchpoint
from .test_erasure import forget, processed
from .test_journeys import create_journey, enter, grant, run_outcome, sends_to


async def unmerge(
    decisioning: Decisioning, survivor: uuid.UUID, restored: uuid.UUID, *also: uuid.UUID
) -> envelope_pb2.Envelope:
    """identity.persons_unmerged as identity publishes it (the envelope names the restored person); returns
    once decisioning has taken it (and an event published after it: one consumer applies them in order)."""
    envelope = await decisioning.feed(
        identity_events.PersonsUnmergedEvent(
            survivor_person_id=str(survivor),
            restored_person_id=str(restored),
            restored_merged_person_ids=[str(m) for m in also],
            merge_id=str(uuid.uuid4()),
            reason="wrongly merged",
        ),
        event_type="identity.persons_unmerged",
        person_id=str(restored),
    )
    await processed(decisioning, await grant(decisioning, uuid.uuid4(), c.CHANNEL_SMS))
    return envelope


async def merged(decisioning: Decisioning, survivor: uuid.UUID, person: uuid.UUID) -> None:
    """identity.persons_merged as identity publishes it; returns once decisioning has applied it."""
    envelope = await decisioning.feed(
        identity_events.PersonsMergedEvent(survivor_person_id=str(survivor), merged_person_ids=[str(person)]),
        event_type="identity.persons_merged",
        person_id=str(survivor),
    )
    await processed(decisioning, envelope)


async def logged_for(decisioning: Decisioning, person: uuid.UUID) -> uuid.UUID:
    """Whom a decision asked for `person` is logged for."""
    response = await decide(decisioning, person, touchpoint())
    logged: uuid.UUID = await decisioning.scalar(
        "SELECT person_id FROM decisions WHERE id = :id", id=uuid.UUID(response.decision_id)
    )
    return logged


async def test_an_unmerged_person_decides_as_itself_again(decisioning: Decisioning) -> None:
    at = touchpoint()
    segment, survivor, restored = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_offer(decisioning, "vip", priority=5, touchpoints=[at], segment_id=segment)
    await create_offer(decisioning, "everyone", priority=1, touchpoints=[at])
    await membership(decisioning, survivor, segment, entered=True)
    await merged(decisioning, survivor, restored)
    assert names(await decide(decisioning, restored, at)) == ["vip", "everyone"]

    await unmerge(decisioning, survivor, restored)

    assert await logged_for(decisioning, restored) == restored
    assert names(await decide(decisioning, restored, at)) == ["everyone"]
    assert names(await decide(decisioning, survivor, at)) == ["vip", "everyone"]


async def test_a_journey_after_an_unmerge_messages_the_restored_person(decisioning: Decisioning) -> None:
    segment, survivor, restored = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await grant(decisioning, survivor, c.CHANNEL_EMAIL)
    await merged(decisioning, survivor, restored)
    await unmerge(decisioning, survivor, restored)
    await processed(decisioning, await grant(decisioning, restored, c.CHANNEL_EMAIL))

    entry = await enter(decisioning, restored, segment)

    assert await run_outcome(decisioning, entry) == "send_requested"
    runs = await decisioning.rows(
        "SELECT person_id FROM journey_runs WHERE trigger_event_id = :e", e=uuid.UUID(entry.id)
    )
    assert [r.person_id for r in runs] == [restored]
    await decisioning.published.wait_for(
        lambda e: e.type == "decisioning.send_requested" and e.person_id == str(restored)
    )
    assert sends_to(decisioning, survivor) == []


async def test_journey_history_follows_the_unmerge(decisioning: Decisioning) -> None:
    segment, survivor, restored = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    for person in (survivor, restored):
        await grant(decisioning, person, c.CHANNEL_EMAIL)
    first = datetime.now(UTC) - timedelta(hours=2)
    started = await enter(decisioning, restored, segment, at=first)
    assert await run_outcome(decisioning, started) == "send_requested"
    await merged(decisioning, survivor, restored)
    await unmerge(decisioning, survivor, restored)
    await processed(decisioning, await grant(decisioning, restored, c.CHANNEL_EMAIL))

    # The survivor never started the journey: the restored person's run went back with it.
    survivors_entry = await enter(decisioning, survivor, segment)
    assert await run_outcome(decisioning, survivors_entry) == "send_requested"
    # The restored person did, within the re-entry window.
    again = await enter(decisioning, restored, segment)
    assert await run_outcome(decisioning, again) == "suppressed_reentry"
    runs = await decisioning.rows(
        "SELECT person_id FROM journey_runs WHERE trigger_event_id = ANY(:e) ORDER BY trigger_time",
        e=[uuid.UUID(started.id), uuid.UUID(survivors_entry.id), uuid.UUID(again.id)],
    )
    assert sorted(r.person_id for r in runs) == sorted([restored, survivor, restored])


async def test_unmerges_along_a_chain_of_merges(decisioning: Decisioning) -> None:
    first, second, root = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await merged(decisioning, second, first)
    await merged(decisioning, root, second)
    assert await logged_for(decisioning, first) == root

    # A survivor that was merged later is split out with the persons merged into it before.
    await unmerge(decisioning, root, second, first)
    assert await logged_for(decisioning, second) == second
    assert await logged_for(decisioning, first) == second
    assert await logged_for(decisioning, root) == root

    # A person merged into one that was merged later: identity names the live root as the survivor.
    await merged(decisioning, root, second)
    assert await logged_for(decisioning, first) == root
    await unmerge(decisioning, root, first)
    assert await logged_for(decisioning, first) == first
    assert await logged_for(decisioning, second) == root


async def test_forgetting_the_survivor_after_an_unmerge_keeps_the_restored_person(
    decisioning: Decisioning,
) -> None:
    survivor, restored = uuid.uuid4(), uuid.uuid4()
    await merged(decisioning, survivor, restored)
    await unmerge(decisioning, survivor, restored)
    await processed(decisioning, await grant(decisioning, restored, c.CHANNEL_SMS))

    # Identity forgets the survivor with the persons merged into it now: the restored one is not among them.
    await processed(decisioning, await forget(decisioning, survivor))

    assert (
        await decisioning.scalar(
            "SELECT count(*) FROM contact_verdicts WHERE person_id = :p AND verdicts <> '[]'", p=restored
        )
        == 1
    )


async def test_a_late_event_about_a_forgotten_person_starts_nothing(decisioning: Decisioning) -> None:
    segment, person, merged_person = await decisioning.segment(), uuid.uuid4(), uuid.uuid4()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await merged(decisioning, person, merged_person)
    await processed(decisioning, await forget(decisioning, person, merged_person))

    # Staged by segmentation before it applied the erasure, delivered after it (with a verdict that allows).
    for who in (person, merged_person):
        await processed(decisioning, await grant(decisioning, who, c.CHANNEL_EMAIL))
        await processed(decisioning, await enter(decisioning, who, segment))

    for who in (person, merged_person):
        for table in ("memberships", "journey_runs"):
            assert await decisioning.scalar(f"SELECT count(*) FROM {table} WHERE person_id = :p", p=who) == 0
        assert sends_to(decisioning, who) == []
