"""BatchResolvePersons: many identifier sets in one call and one transaction, resolved in order."""

from __future__ import annotations

import uuid

from omni.common.v1 import common_pb2
from omni.identity.v1 import events_pb2, identity_pb2
from omni_kit.bus import unpack

from .support import EventLog, Identity, ident, pairs, resolve, unique


def request(*identifiers: common_pb2.Identifier, source: str = "batch") -> identity_pb2.ResolvePersonRequest:
    """One identifier set of a batch."""
    return identity_pb2.ResolvePersonRequest(identifiers=list(identifiers), source=source)


async def batch(
    identity: Identity, *requests: identity_pb2.ResolvePersonRequest
) -> list[identity_pb2.Resolution]:
    """Resolve a batch and return its resolutions."""
    response = await identity.stub.BatchResolvePersons(
        identity_pb2.BatchResolvePersonsRequest(requests=list(requests))
    )
    return list(response.resolutions)


async def test_later_requests_see_what_earlier_ones_did(identity: Identity, events: EventLog) -> None:
    cookie, device, email = unique("c-"), unique("d-"), f"{unique('b')}@example.com"
    resolutions = await batch(
        identity,
        request(ident("anonymous_id", cookie)),
        request(ident("anonymous_id", cookie), ident("email", email)),
        request(ident("device_id", device)),
        request(ident("device_id", device), ident("email", email)),
        request(ident("email", email.upper())),
    )

    web, login, app, linked, again = resolutions
    assert web.created and not login.created and app.created and not linked.created
    assert login.person_id == web.person_id
    assert pairs(login.added_identifiers) == {("email", email)}
    assert linked.person_id == web.person_id
    assert list(linked.merged_person_ids) == [app.person_id]
    assert again.person_id == web.person_id and not again.created and not again.added_identifiers

    person = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=app.person_id))).person
    assert person.id == web.person_id
    assert pairs(person.identifiers) == {("anonymous_id", cookie), ("device_id", device), ("email", email)}

    created = await events.wait_for("identity.person_created", 2)
    assert {e.person_id for e in created} == {web.person_id, app.person_id}
    [merged] = await events.wait_for("identity.persons_merged")
    payload = unpack(merged, events_pb2.PersonsMergedEvent)
    assert payload.survivor_person_id == web.person_id
    assert list(payload.merged_person_ids) == [app.person_id]
    # Events are published in the order the changes happened.
    ours = {web.person_id, app.person_id}
    assert [e.type for e in events.envelopes if e.person_id in ours] == [
        "identity.person_created",
        "identity.person_created",
        "identity.persons_merged",
    ]


async def test_a_batch_merges_persons_that_existed_before_it(identity: Identity) -> None:
    a, b, c = unique("a-"), unique("b-"), unique("c-")
    first = await resolve(identity, ident("user_id", a), ident("device_id", unique()))
    second = await resolve(identity, ident("loyalty_card", b))
    third = await resolve(identity, ident("pos_customer_id", c))

    resolutions = await batch(
        identity,
        request(ident("loyalty_card", b), ident("pos_customer_id", c)),
        request(ident("pos_customer_id", c), ident("user_id", a)),
    )

    assert resolutions[0].person_id == second.person_id
    assert list(resolutions[0].merged_person_ids) == [third.person_id]
    assert resolutions[1].person_id == first.person_id
    assert list(resolutions[1].merged_person_ids) == [second.person_id]
    person = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=third.person_id))).person
    assert person.id == first.person_id
    assert set(person.merged_person_ids) == {second.person_id, third.person_id}
    assert len(person.identifiers) == 4


async def test_a_thousand_identifier_sets_in_one_call(identity: Identity) -> None:
    shared = unique("shared-")
    requests = [
        request(ident("anonymous_id", unique()), ident("device_id", f"{shared}-{i % 10}"))
        for i in range(1000)
    ]
    resolutions = await batch(identity, *requests)

    assert len(resolutions) == 1000
    assert sum(r.created for r in resolutions) == 10
    assert len({r.person_id for r in resolutions}) == 10
    assert all(uuid.UUID(r.person_id).version == 7 for r in resolutions)
    person = (
        await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=resolutions[0].person_id))
    ).person
    # A person may hold 5 cookies a week: each device keeps its first 5, the other 95 are refused.
    assert len(person.identifiers) == 6
    refused = [link for r in resolutions for link in r.refused_links]
    assert len(refused) == 950
    assert {link.rule_identifier_type for link in refused} == {"anonymous_id"}
    assert all(link.holder_person_id == "" and link.refuse_count == 1 for link in refused)


async def test_duplicate_identifiers_in_one_request_count_once(identity: Identity) -> None:
    email = f"{unique('dup')}@example.com"
    [resolution] = await batch(
        identity, request(ident("email", email), ident("email", f" {email.upper()} "), ident("email", email))
    )
    assert resolution.created
    assert pairs(resolution.added_identifiers) == {("email", email)}
    assert len(resolution.added_identifiers) == 1


async def test_known_sets_are_answered_in_order_around_the_sets_that_change_the_graph(
    identity: Identity, events: EventLog
) -> None:
    a, b, c = unique("a-"), unique("b-"), unique("c-")
    older = await resolve(identity, ident("user_id", a))
    newer = await resolve(identity, ident("loyalty_card", b))

    resolutions = await batch(
        identity,
        request(ident("loyalty_card", b)),  # known: the newer person, before any merge
        request(ident("user_id", a), ident("loyalty_card", b)),  # merges newer into older
        request(ident("loyalty_card", b)),  # known before the batch; now the survivor's
        request(ident("anonymous_id", c)),  # new
        request(ident("user_id", a)),  # known
    )

    before, merging, after, fresh, known = resolutions
    assert before.person_id == newer.person_id and not before.merged_person_ids
    assert merging.person_id == older.person_id and list(merging.merged_person_ids) == [newer.person_id]
    assert after.person_id == older.person_id and not after.created and not after.merged_person_ids
    assert fresh.created and fresh.person_id not in (older.person_id, newer.person_id)
    assert known.person_id == older.person_id and not known.created
    # The same batch again changes nothing and answers every set with the survivor.
    again = await batch(
        identity,
        request(ident("loyalty_card", b)),
        request(ident("user_id", a), ident("loyalty_card", b)),
        request(ident("anonymous_id", c)),
    )
    assert [r.person_id for r in again] == [older.person_id, older.person_id, fresh.person_id]
    assert not any(r.created or r.merged_person_ids or r.added_identifiers for r in again)
    assert len(await events.wait_for("identity.persons_merged")) == 1


async def test_batch_get_persons_answers_each_id_in_order_merged_ids_lead_to_the_survivor(
    identity: Identity,
) -> None:
    cookie, device, email = unique("c-"), unique("d-"), f"{unique('g')}@example.com"
    web, app, _ = await batch(
        identity,
        request(ident("anonymous_id", cookie)),
        request(ident("device_id", device)),
        request(ident("anonymous_id", cookie), ident("device_id", device), ident("email", email)),
    )
    unknown = str(uuid.uuid4())

    response = await identity.stub.BatchGetPersons(
        identity_pb2.BatchGetPersonsRequest(person_ids=[app.person_id, unknown, web.person_id])
    )

    merged, missing, survivor = response.results
    assert merged.person_id == app.person_id and merged.person.id == web.person_id
    assert pairs(merged.person.identifiers) == {
        ("anonymous_id", cookie),
        ("device_id", device),
        ("email", email),
    }
    assert survivor.person == merged.person and not survivor.not_found_reason
    assert missing.person_id == unknown and not missing.HasField("person")
    assert missing.not_found_reason == "PERSON_NOT_FOUND"
