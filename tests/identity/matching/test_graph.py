"""The matcher and the identity graph as one: persons it creates, identifiers it attaches, records that
follow merges, unmerges and erasure of the graph."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import nats.errors
import pytest
import sqlalchemy as sa

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, matching_pb2
from omni_kit.bus import envelopes_in, subject_for
from omni_kit.errors import status_details

from .support import MatchingServer, person, unique_word, with_fields

LINKED = matching_pb2.MATCH_DECISION_LINKED
REVIEW = matching_pb2.MATCH_DECISION_REVIEW
NEW_PERSON = matching_pb2.MATCH_DECISION_NEW_PERSON


def email() -> common_pb2.Identifier:
    """An email address no other test uses."""
    return common_pb2.Identifier(type="email", value=f"{unique_word()}@example.com")


def user_id() -> common_pb2.Identifier:
    """A user id no other test uses."""
    return common_pb2.Identifier(type="user_id", value=unique_word(12))


async def match(server: MatchingServer, record: matching_pb2.PersonRecord) -> matching_pb2.MatchResult:
    """MatchRecord and return the result."""
    response = await server.stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record, source="pos"))
    return response.result


async def resolve(server: MatchingServer, *identifiers: common_pb2.Identifier) -> identity_pb2.Resolution:
    """ResolvePerson and return the resolution."""
    request = identity_pb2.ResolvePersonRequest(identifiers=identifiers, source="web")
    return (await server.identity.ResolvePerson(request)).resolution


async def records_of(server: MatchingServer, *person_ids: str) -> list[tuple[str, str]]:
    """The (record id, person id) of every record filed under or now held by these persons."""
    async with server.runtime.engine.connect() as connection:
        rows = await connection.execute(
            sa.text(
                "SELECT id, person_id FROM person_records WHERE person_id = ANY(CAST(:ids AS uuid[]))"
                " OR filed_under = ANY(CAST(:ids AS uuid[])) ORDER BY id"
            ),
            {"ids": [uuid.UUID(p) for p in person_ids]},
        )
        return [(str(row.id), str(row.person_id)) for row in rows]


async def person_created_events(server: MatchingServer, person_id: str) -> int:
    """How many identity.person_created events were published for a person (a message may hold several),
    once the outbox has published everything staged."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while await unpublished(server):
        assert asyncio.get_running_loop().time() < deadline, "the outbox was not published"
        await asyncio.sleep(0.02)
    runtime = server.runtime
    subject = subject_for("identity.person_created", runtime.settings.event_namespace)
    subscription = await runtime.js.subscribe(subject, ordered_consumer=True)
    count = 0
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                return count
            count += sum(e.person_id == person_id for e in envelopes_in(message.data, message.headers))
            if message.metadata.num_pending == 0:
                return count
    finally:
        await subscription.unsubscribe()


async def unpublished(server: MatchingServer) -> int:
    """How many rows of the outbox are not published yet."""
    async with server.runtime.engine.connect() as connection:
        return int(await connection.scalar(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")))


async def test_a_new_person_is_a_person_of_the_graph(server: MatchingServer) -> None:
    card = common_pb2.Identifier(type="loyalty_card", value=unique_word(12))
    address = email()
    result = await match(server, person(identifiers=[card, address]))
    assert result.decision == NEW_PERSON
    got = (await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=result.person_id))).person
    assert got.id == result.person_id
    assert {(i.type, i.value) for i in got.identifiers} == {(card.type, card.value), ("email", address.value)}
    looked_up = await server.identity.LookupPerson(identity_pb2.LookupPersonRequest(identifier=card))
    assert looked_up.person.id == result.person_id
    listed = await server.identity.ListPersonIdentifiers(
        identity_pb2.ListPersonIdentifiersRequest(person_id=result.person_id)
    )
    assert {i.attachment for i in listed.identifiers} == {identity_pb2.ATTACHMENT_NEW_PERSON}
    assert {i.source for i in listed.identifiers} == {"pos"}
    assert await person_created_events(server, result.person_id) == 1


async def test_a_new_person_without_identifiers_is_a_person_too(server: MatchingServer) -> None:
    result = await match(server, person())
    got = (await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=result.person_id))).person
    assert got.id == result.person_id and not got.identifiers
    assert await person_created_events(server, result.person_id) == 1


async def test_a_linked_records_identifiers_resolve_to_the_person(server: MatchingServer) -> None:
    record = person()
    created = await match(server, record)
    address = email()
    linked = await match(server, with_fields(record, address_2="Flat 9", identifiers=[address]))
    assert linked.decision == LINKED and linked.person_id == created.person_id
    resolution = await resolve(server, address)
    assert resolution.person_id == created.person_id and not resolution.created
    listed = await server.identity.ListPersonIdentifiers(
        identity_pb2.ListPersonIdentifiersRequest(person_id=created.person_id)
    )
    [attached] = listed.identifiers
    assert attached.attachment == identity_pb2.ATTACHMENT_RECORD_MATCH
    assert attached.attached_person_id == created.person_id
    # Attaching to a known person creates no person.
    assert await person_created_events(server, created.person_id) == 1


async def test_an_identifier_the_graph_knows_links_the_record_to_its_holder(server: MatchingServer) -> None:
    address = email()
    holder = (await resolve(server, address)).person_id
    result = await match(server, person(identifiers=[address]))
    assert result.decision == LINKED and result.person_id == holder
    assert list(result.identifier_person_ids) == [holder]
    assert await records_of(server, holder) == [(result.record_id, holder)]


async def test_an_identifier_held_by_another_person_sends_a_close_record_to_review(
    server: MatchingServer,
) -> None:
    record = person()
    created = await match(server, record)
    address = email()
    other = (await resolve(server, address)).person_id
    records = await records_of(server, created.person_id, other)
    result = await match(server, with_fields(record, identifiers=[address]))
    # The names and address say one person, the email another: never joined silently.
    assert result.decision == REVIEW and result.person_id == ""
    assert list(result.identifier_person_ids) == [other]
    assert result.candidates[0].person_id == created.person_id
    assert await records_of(server, created.person_id, other) == records
    got = await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=other))
    assert not got.person.merged_person_ids
    decisions = await server.stub.ListMatchDecisions(matching_pb2.ListMatchDecisionsRequest(person_id=other))
    assert [d.id for d in decisions.decisions] == [result.decision_id]


async def test_identifiers_of_two_persons_send_the_record_to_review(server: MatchingServer) -> None:
    first, second = email(), email()
    a, b = (await resolve(server, first)).person_id, (await resolve(server, second)).person_id
    result = await match(server, person(identifiers=[first, second]))
    assert result.decision == REVIEW
    assert sorted(result.identifier_person_ids) == sorted([a, b])


async def test_a_limit_refuses_an_identifier_but_not_the_match(server: MatchingServer) -> None:
    record = person(identifiers=[user_id()])
    created = await match(server, record)
    second = user_id()
    linked = await match(server, with_fields(record, address_2="Flat 2", identifiers=[second]))
    assert linked.decision == LINKED and linked.person_id == created.person_id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.identity.LookupPerson(identity_pb2.LookupPersonRequest(identifier=second))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    refused = await server.identity.ListRefusedLinks(
        identity_pb2.ListRefusedLinksRequest(person_id=created.person_id)
    )
    [link] = refused.refused_links
    assert (link.identifier.type, link.identifier.value) == ("user_id", second.value)
    assert link.rule == identity_pb2.REFUSAL_RULE_LIMIT and link.resolved_person_id == created.person_id


async def test_an_operator_merge_moves_records_and_unmerge_moves_them_back(server: MatchingServer) -> None:
    record = person()
    merged = await match(server, record)
    survivor = await match(server, person())
    await server.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            survivor_person_id=survivor.person_id,
            merged_person_id=merged.person_id,
            reason="same customer",
            request_id=f"merge-{uuid.uuid4()}",
        )
    )
    assert await records_of(server, merged.person_id) == [(merged.record_id, survivor.person_id)]
    listed = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=survivor.person_id)
    )
    assert {d.id for d in listed.decisions} == {merged.decision_id, survivor.decision_id}
    again = await match(server, with_fields(record, address_2="Flat 7"))
    assert again.decision == LINKED and again.person_id == survivor.person_id
    await server.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(
            person_id=merged.person_id, reason="different customers", request_id=f"unmerge-{uuid.uuid4()}"
        )
    )
    # The record linked after the merge matched the merged person's record: it goes back with it.
    assert await records_of(server, merged.person_id) == [
        (merged.record_id, merged.person_id),
        (again.record_id, merged.person_id),
    ]
    assert await records_of(server, survivor.person_id) == [(survivor.record_id, survivor.person_id)]
    after = await match(server, with_fields(record, address_2="Flat 8"))
    assert after.decision == LINKED and after.person_id == merged.person_id


async def test_a_resolve_merge_moves_records_to_the_survivor(server: MatchingServer) -> None:
    first, second = email(), email()
    older = await match(server, person(identifiers=[first]))
    newer = await match(server, person(identifiers=[second]))
    resolution = await resolve(server, first, second)
    assert resolution.person_id == older.person_id
    assert list(resolution.merged_person_ids) == [newer.person_id]
    assert await records_of(server, newer.person_id) == [(newer.record_id, older.person_id)]


async def test_forgetting_after_a_merge_leaves_no_records(server: MatchingServer) -> None:
    merged = await match(server, person(identifiers=[email()]))
    survivor = await match(server, person())
    await server.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            survivor_person_id=survivor.person_id,
            merged_person_id=merged.person_id,
            request_id=f"merge-{uuid.uuid4()}",
        )
    )
    await server.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            person_id=survivor.person_id, requested_by="dpo@example.com", request_id=f"forget-{uuid.uuid4()}"
        )
    )
    assert await records_of(server, merged.person_id, survivor.person_id) == []
    async with server.runtime.engine.connect() as connection:
        decisions = await connection.scalar(
            sa.text("SELECT count(*) FROM match_decisions WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(merged.decision_id), uuid.UUID(survivor.decision_id)]},
        )
    assert decisions == 0


async def test_a_tombstoned_identifier_is_not_filed_again(server: MatchingServer) -> None:
    address = email()
    forgotten = await match(server, person(identifiers=[address]))
    await server.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            person_id=forgotten.person_id, requested_by="dpo", request_id=f"forget-{uuid.uuid4()}"
        )
    )
    result = await match(server, person(identifiers=[address]))
    assert result.decision == NEW_PERSON
    got = (await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=result.person_id))).person
    assert not got.identifiers
    decisions = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=result.person_id)
    )
    assert not decisions.decisions[0].record.identifiers


async def test_a_batch_files_identifiers_once(server: MatchingServer) -> None:
    address = email()
    record = person(identifiers=[address])
    response = await server.stub.BatchMatchRecords(
        matching_pb2.BatchMatchRecordsRequest(records=[record, person(identifiers=[address])])
    )
    first, second = response.results
    assert first.decision == NEW_PERSON
    # The stranger carries the first record's email: its holder, whose record is unlike it, is asked about.
    assert second.decision == REVIEW
    assert list(second.identifier_person_ids) == [first.person_id]
    holder = await server.identity.LookupPerson(identity_pb2.LookupPersonRequest(identifier=address))
    assert holder.person.id == first.person_id


async def test_a_person_merged_while_a_record_links_to_it_is_followed(server: MatchingServer) -> None:
    record = person()
    merged = await match(server, record)
    survivor = await match(server, person())
    await server.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            survivor_person_id=survivor.person_id,
            merged_person_id=merged.person_id,
            request_id=f"merge-{uuid.uuid4()}",
        )
    )
    # The merged person's id no longer holds records: a record like its one links to the survivor.
    result = await match(server, with_fields(record, address_2="Flat 1"))
    assert result.person_id == survivor.person_id
    listed = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=merged.person_id)
    )
    assert result.decision_id in {d.id for d in listed.decisions}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.ListMatchDecisions(matching_pb2.ListMatchDecisionsRequest(person_id="nope"))
    assert status_details(raised.value).fields == {"person_id"}


async def test_matches_racing_merges_and_forgets_leave_every_record_with_a_live_person(
    server: MatchingServer,
) -> None:
    records = [person(identifiers=[email()]) for _ in range(6)]
    persons = [(await match(server, record)).person_id for record in records]
    # Again, slightly different (a clerk's typo), while an operator merges and forgets the same persons.
    again = [with_fields(record, address_2="Unit 5") for record in records]

    async def merge(survivor: str, merged: str) -> None:
        await server.identity.MergePersons(
            identity_pb2.MergePersonsRequest(
                request_id=str(uuid.uuid4()),
                survivor_person_id=survivor,
                merged_person_id=merged,
                reason="dup",
            )
        )

    async def forget(person_id: str) -> None:
        await server.identity.ForgetPerson(
            identity_pb2.ForgetPersonRequest(
                request_id=str(uuid.uuid4()), person_id=person_id, requested_by="dpo@example.com"
            )
        )

    results = await asyncio.gather(
        *(match(server, record) for record in again),
        merge(persons[0], persons[1]),
        merge(persons[2], persons[3]),
        forget(persons[4]),
        *(match(server, record) for record in reversed(again)),
    )

    decisions = [r.decision for r in results if isinstance(r, matching_pb2.MatchResult)]
    assert len(decisions) == 12 and REVIEW not in decisions
    async with server.runtime.engine.connect() as connection:
        stray = await connection.scalar(
            sa.text(
                "SELECT count(*) FROM person_records AS r LEFT JOIN persons AS p ON p.id = r.person_id"
                " WHERE r.person_id = ANY(CAST(:ids AS uuid[]))"
                " AND (p.id IS NULL OR p.merged_into IS NOT NULL OR p.forgotten_at IS NOT NULL)"
            ),
            {"ids": [uuid.UUID(p) for p in persons]},
        )
    assert stray == 0, "a record is filed under a merged, forgotten or unknown person"
    # The merged persons' records, old and new, are the survivors'; the forgotten person kept none.
    assert {pid for _, pid in await records_of(server, persons[1])} == {persons[0]}
    assert {pid for _, pid in await records_of(server, persons[3])} == {persons[2]}
    assert all(pid != persons[4] for _, pid in await records_of(server, persons[4]))
