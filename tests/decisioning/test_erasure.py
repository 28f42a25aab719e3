"""Erasure: identity.person_forgotten deletes everything decisioning holds about every id of the person."""

from __future__ import annotations

import uuid

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events

from .support import Decisioning
from .test_journeys import create_journey, enter, grant, run_outcome

PERSON_FORGOTTEN = "identity.person_forgotten"

# Every table that holds something about a person, with the query counting a person's rows in it.
PERSON_ROWS = {
    "memberships": "SELECT count(*) FROM memberships WHERE person_id = :p",
    # An erased person's verdicts leave a tombstone without any.
    "contact_verdicts": "SELECT count(*) FROM contact_verdicts WHERE person_id = :p AND verdicts <> '[]'",
    # Merge aliases, either side (a forgotten id keeps a tombstone, which leads nowhere).
    "person_lineage": (
        "SELECT count(*) FROM person_lineage WHERE (person_id = :p AND survivor_id IS NOT NULL) OR survivor_id = :p"
    ),
    "journey_runs": "SELECT count(*) FROM journey_runs WHERE person_id = :p",
    "decisions": "SELECT count(*) FROM decisions WHERE person_id = :p",
}


async def held_about(decisioning: Decisioning, person: uuid.UUID) -> dict[str, int]:
    """How many rows each table holds about the person."""
    return {table: await decisioning.scalar(sql, p=person) for table, sql in PERSON_ROWS.items()}


async def merge(decisioning: Decisioning, survivor: uuid.UUID, merged: uuid.UUID) -> None:
    await decisioning.feed(
        identity_events.PersonsMergedEvent(survivor_person_id=str(survivor), merged_person_ids=[str(merged)]),
        event_type="identity.persons_merged",
        person_id=str(survivor),
    )


async def forget(decisioning: Decisioning, person: uuid.UUID, *ids: uuid.UUID) -> envelope_pb2.Envelope:
    return await decisioning.feed(
        identity_events.PersonForgottenEvent(
            person_id=str(person),
            forgotten_person_ids=[str(person), *(str(i) for i in ids)],
            erasure_id=str(uuid.uuid4()),
        ),
        event_type=PERSON_FORGOTTEN,
        person_id=str(person),
    )


async def tombstones(decisioning: Decisioning, *persons: uuid.UUID) -> int:
    """How many of these persons are held as forgotten."""
    count: int = await decisioning.scalar(
        "SELECT count(*) FROM person_lineage WHERE person_id = ANY(:p) AND forgotten_at IS NOT NULL",
        p=list(persons),
    )
    return count


async def processed(decisioning: Decisioning, envelope: envelope_pb2.Envelope) -> None:
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :e", e=uuid.UUID(envelope.id))


async def test_forgetting_deletes_every_row_of_every_id_and_nothing_of_others(
    decisioning: Decisioning,
) -> None:
    person, merged, other, other_merged = (uuid.uuid4() for _ in range(4))
    segment = await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    for who in (person, other):
        await grant(decisioning, who, c.CHANNEL_EMAIL)
    await merge(decisioning, person, merged)
    await merge(decisioning, other, other_merged)
    entries = [await enter(decisioning, who, segment) for who in (merged, other)]
    for entry in entries:
        assert await run_outcome(decisioning, entry) == "send_requested"
    for who in (merged, other):
        await decisioning.stub.Decide(d.DecideRequest(person_id=str(who), touchpoint="home"))
    expected = {
        "memberships": 1,
        "contact_verdicts": 1,
        "person_lineage": 1,
        "journey_runs": 1,
        "decisions": 1,
    }
    assert await held_about(decisioning, person) == expected
    before_other = await held_about(decisioning, other)
    assert before_other == expected

    await processed(decisioning, await forget(decisioning, person, merged))

    nothing = dict.fromkeys(PERSON_ROWS, 0)
    assert await held_about(decisioning, person) == nothing
    assert await held_about(decisioning, merged) == nothing
    assert await tombstones(decisioning, person, merged) == 2
    assert await held_about(decisioning, other) == before_other
    assert await held_about(decisioning, other_merged) == {**nothing, "person_lineage": 1}


async def test_an_alias_missing_from_the_event_is_forgotten_with_its_survivor(
    decisioning: Decisioning,
) -> None:
    person, merged = uuid.uuid4(), uuid.uuid4()
    await grant(decisioning, merged, c.CHANNEL_SMS)
    await merge(decisioning, person, merged)
    await decisioning.eventually(
        "SELECT 1 FROM person_lineage WHERE person_id = :p AND survivor_id IS NOT NULL", p=merged
    )

    await processed(decisioning, await forget(decisioning, person))

    nothing = dict.fromkeys(PERSON_ROWS, 0)
    assert await held_about(decisioning, person) == nothing
    assert await held_about(decisioning, merged) == nothing


async def test_forgetting_again_or_an_unknown_person_changes_nothing_else(decisioning: Decisioning) -> None:
    person, bystander = uuid.uuid4(), uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    await grant(decisioning, bystander, c.CHANNEL_EMAIL)
    await processed(decisioning, await forget(decisioning, person))
    await processed(decisioning, await forget(decisioning, person))
    await processed(decisioning, await forget(decisioning, uuid.uuid4(), uuid.uuid4()))

    assert await held_about(decisioning, person) == dict.fromkeys(PERSON_ROWS, 0)
    assert (
        await decisioning.scalar("SELECT count(*) FROM contact_verdicts WHERE person_id = :p", p=bystander)
        == 1
    )
    # The consumer goes on after them.
    later = await grant(decisioning, person, c.CHANNEL_SMS)
    await processed(decisioning, later)


async def test_malformed_ids_do_not_stop_the_valid_ones_from_being_forgotten(
    decisioning: Decisioning,
) -> None:
    person = uuid.uuid4()
    await processed(decisioning, await grant(decisioning, person, c.CHANNEL_EMAIL))
    envelope = await decisioning.feed(
        identity_events.PersonForgottenEvent(
            person_id=str(person), forgotten_person_ids=[str(person), "not-a-uuid"]
        ),
        event_type=PERSON_FORGOTTEN,
        person_id=str(person),
    )
    await processed(decisioning, envelope)
    assert await held_about(decisioning, person) == dict.fromkeys(PERSON_ROWS, 0)
