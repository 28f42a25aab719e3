"""Resolving identifiers over gRPC on real PostgreSQL and NATS: create, attach, merge, and the events."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from omni.identity.v1 import events_pb2, identity_pb2
from omni_kit.bus import unpack

from .support import EventLog, Identity, ident, pairs, resolve, unique


async def test_unknown_identifiers_create_a_person_and_publish_person_created(
    identity: Identity, events: EventLog
) -> None:
    email = f"{unique('ada')}@Example.com"
    resolution = await resolve(
        identity, ident("email", f"  {email} "), ident("anonymous_id", unique()), source="web"
    )

    assert resolution.created
    assert uuid.UUID(resolution.person_id).version == 7
    assert ("email", email.lower()) in pairs(resolution.added_identifiers)
    [envelope] = [
        e for e in await events.wait_for("identity.person_created") if e.person_id == resolution.person_id
    ]
    payload = unpack(envelope, events_pb2.PersonCreatedEvent)
    assert payload.person_id == resolution.person_id
    assert pairs(payload.identifiers) == pairs(resolution.added_identifiers)
    assert payload.source == "web"
    assert envelope.producer == "identity"


async def test_the_same_identifiers_again_resolve_to_the_same_person(identity: Identity) -> None:
    cookie = unique()
    first = await resolve(identity, ident("anonymous_id", cookie))
    second = await resolve(identity, ident("anonymous_id", f" {cookie}"))

    assert second.person_id == first.person_id
    assert not second.created
    assert list(second.added_identifiers) == []


async def test_a_new_identifier_is_added_to_the_matched_person(identity: Identity) -> None:
    device = unique("dev-")
    first = await resolve(identity, ident("device_id", device))
    second = await resolve(
        identity, ident("device_id", device), ident("phone", "(415) 555-0100"), source="app"
    )

    assert second.person_id == first.person_id
    assert not second.created
    assert pairs(second.added_identifiers) == {("phone", "+14155550100")}
    person = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=first.person_id))).person
    assert pairs(person.identifiers) == {("device_id", device), ("phone", "+14155550100")}


async def test_a_request_linking_two_persons_merges_them_into_the_oldest(
    identity: Identity, events: EventLog
) -> None:
    cookie, device, email = unique("c-"), unique("d-"), f"{unique('m')}@example.com"
    web = await resolve(identity, ident("anonymous_id", cookie), source="web")
    app = await resolve(identity, ident("device_id", device), source="app")
    login = await resolve(
        identity, ident("device_id", device), ident("anonymous_id", cookie), ident("email", email)
    )

    assert uuid.UUID(web.person_id) < uuid.UUID(app.person_id)
    assert login.person_id == web.person_id
    assert list(login.merged_person_ids) == [app.person_id]
    assert pairs(login.added_identifiers) == {("email", email)}

    survivor = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=web.person_id))).person
    assert pairs(survivor.identifiers) == {("anonymous_id", cookie), ("device_id", device), ("email", email)}
    assert list(survivor.merged_person_ids) == [app.person_id]

    merged = [e for e in await events.wait_for("identity.persons_merged") if e.person_id == web.person_id]
    [envelope] = merged
    payload = unpack(envelope, events_pb2.PersonsMergedEvent)
    assert payload.survivor_person_id == web.person_id
    assert list(payload.merged_person_ids) == [app.person_id]
    # What linked the two persons; the email came along and linked nothing.
    assert pairs(payload.cause_identifiers) == {("anonymous_id", cookie), ("device_id", device)}
    assert payload.source == "test"

    async with identity.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT survivor_id, merged_id, source FROM merges WHERE survivor_id = :id"),
                {"id": uuid.UUID(web.person_id)},
            )
        ).all()
    assert [(str(r.survivor_id), str(r.merged_id), r.source) for r in rows] == [
        (web.person_id, app.person_id, "test")
    ]


async def test_get_person_on_a_merged_id_returns_the_survivor(identity: Identity) -> None:
    a, b = unique(), unique()
    older = await resolve(identity, ident("user_id", a))
    newer = await resolve(identity, ident("loyalty_card", b))
    await resolve(identity, ident("loyalty_card", b), ident("user_id", a))

    person = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=newer.person_id))).person
    assert person.id == older.person_id
    assert list(person.merged_person_ids) == [newer.person_id]


async def test_lookup_finds_the_person_after_normalising(identity: Identity) -> None:
    email = f"{unique('look')}@example.com"
    created = await resolve(identity, ident("email", email))

    found = await identity.stub.LookupPerson(
        identity_pb2.LookupPersonRequest(identifier=ident("email", f"  {email.upper()}"))
    )
    assert found.person.id == created.person_id
