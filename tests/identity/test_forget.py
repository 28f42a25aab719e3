"""ForgetPerson over gRPC: erasure of identifiers and links, tombstones, audit, the event, the policies."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
import sqlalchemy as sa

from omni.identity.v1 import events_pb2, identity_pb2
from omni_identity.erasure import DEVELOPMENT_KEY
from omni_identity.matching.matcher import StoredRecord
from omni_identity.matching.records import NormalisedRecord
from omni_identity.matching.repository import MatchRepository
from omni_kit.bus import unpack
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from .conftest import running_identity
from .support import EventLog, Identity, forget, ident, merge_persons, pairs, person, resolve, unique, unmerge


@pytest.fixture(scope="module")
async def new_person_policy(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Identity]:
    """Identity whose tombstone policy starts a new person for identifiers of forgotten persons."""
    async with running_identity(postgres, nats_server, tombstone_policy="new_person") as running:
        yield running


async def _rows(identity: Identity, query: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
    async with identity.runtime.engine.connect() as connection:
        return list((await connection.execute(sa.text(query), params)).all())


def _tombstone(type_: str, value: str) -> bytes:
    return hmac.digest(DEVELOPMENT_KEY, f"{type_}\x00{value}".encode(), "sha256")


async def _forgotten_customer(identity: Identity) -> tuple[str, str, list[tuple[str, str]]]:
    """A customer of two merged persons with a refused link; returns (survivor, merged, identifiers)."""
    email, cookie, device, user = f"{unique('gone')}@example.com", unique("c-"), unique("d-"), unique("u-")
    survivor = await resolve(identity, ident("email", email), ident("anonymous_id", cookie))
    merged = await resolve(identity, ident("device_id", device))
    await resolve(identity, ident("anonymous_id", cookie), ident("device_id", device))
    await resolve(identity, ident("email", email), ident("user_id", user))
    refused = await resolve(identity, ident("email", email), ident("user_id", unique("u2-")))
    assert len(refused.refused_links) == 1
    held = [("email", email), ("anonymous_id", cookie), ("device_id", device), ("user_id", user)]
    return survivor.person_id, merged.person_id, held


async def test_forgetting_removes_identifiers_and_links_and_leaves_only_tombstones(
    identity: Identity, events: EventLog
) -> None:
    survivor, merged, held = await _forgotten_customer(identity)

    response = await forget(identity, merged, requested_by="dpo@shop.example", reason="GDPR art. 17 #42")

    erasure = response.erasure
    assert erasure.person_id == survivor
    assert set(erasure.forgotten_person_ids) == {survivor, merged}
    assert erasure.identifier_count == 4
    assert (erasure.requested_by, erasure.reason) == ("dpo@shop.example", "GDPR art. 17 #42")
    ids = [uuid.UUID(survivor), uuid.UUID(merged)]
    assert await _rows(identity, "SELECT 1 FROM identifiers WHERE person_id = ANY(:ids)", ids=ids) == []
    assert (
        await _rows(
            identity, "SELECT 1 FROM merges WHERE survivor_id = ANY(:ids) OR merged_id = ANY(:ids)", ids=ids
        )
        == []
    )
    assert (
        await _rows(identity, "SELECT 1 FROM refused_links WHERE person_ids && CAST(:ids AS uuid[])", ids=ids)
        == []
    )
    forgotten = await _rows(identity, "SELECT forgotten_at FROM persons WHERE id = ANY(:ids)", ids=ids)
    assert len(forgotten) == 2 and all(row.forgotten_at is not None for row in forgotten)
    tombstones = await _rows(
        identity, "SELECT hash, type FROM tombstones WHERE erasure_id = :id", id=uuid.UUID(erasure.id)
    )
    assert {(bytes(row.hash), row.type) for row in tombstones} == {(_tombstone(t, v), t) for t, v in held}
    [audit] = await _rows(identity, "SELECT * FROM erasures WHERE id = :id", id=uuid.UUID(erasure.id))
    assert (audit.requested_by, audit.identifier_count, audit.request_id) == (
        "dpo@shop.example",
        4,
        erasure.request_id,
    )
    # No raw value is left anywhere in identity's tables.
    everything = await _rows(
        identity,
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM identifiers) t UNION ALL "
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM merges) t UNION ALL "
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM refused_links) t UNION ALL "
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM tombstones) t UNION ALL "
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM erasures) t UNION ALL "
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM idempotency_keys) t",
    )
    text = " ".join(str(row[0] or "") for row in everything)
    assert not [value for _, value in held if value in text]

    for person_id in (survivor, merged):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await person(identity, person_id)
        details = status_details(caught.value)
        assert details.code == grpc.StatusCode.NOT_FOUND
        assert details.error_info is not None and details.error_info.reason == "PERSON_FORGOTTEN"
    [envelope] = [e for e in await events.wait_for("identity.person_forgotten") if e.person_id == survivor]
    payload = unpack(envelope, events_pb2.PersonForgottenEvent)
    assert set(payload.forgotten_person_ids) == {survivor, merged} and payload.erasure_id == erasure.id


async def test_later_resolves_drop_identifiers_of_forgotten_persons(identity: Identity) -> None:
    survivor, _, held = await _forgotten_customer(identity)
    await forget(identity, survivor)
    (email_type, email), (cookie_type, cookie) = held[0], held[1]
    [before] = await _rows(identity, "SELECT count(*) AS n FROM persons")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await resolve(identity, ident(email_type, email.upper()), ident(cookie_type, cookie))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None and details.error_info.reason == "PERSON_FORGOTTEN"
    assert (await _rows(identity, "SELECT count(*) AS n FROM persons"))[0].n == before.n

    fresh = unique("fresh-")
    mixed = await resolve(identity, ident(email_type, email), ident("anonymous_id", fresh))
    assert mixed.created and pairs(mixed.added_identifiers) == {("anonymous_id", fresh)}
    assert pairs(mixed.ignored_identifiers) == {(email_type, email)}

    response = await identity.stub.BatchResolvePersons(
        identity_pb2.BatchResolvePersonsRequest(
            requests=[
                identity_pb2.ResolvePersonRequest(identifiers=[ident(cookie_type, cookie)]),
                identity_pb2.ResolvePersonRequest(identifiers=[ident("anonymous_id", fresh)]),
            ]
        )
    )
    gone, known = response.resolutions
    assert (
        gone.forgotten and gone.person_id == "" and pairs(gone.ignored_identifiers) == {(cookie_type, cookie)}
    )
    assert known.person_id == mixed.person_id and not known.forgotten


async def test_forgetting_is_idempotent_by_request_id(identity: Identity) -> None:
    subject = await resolve(identity, ident("device_id", unique()))
    request_id = unique("rq-")

    first = await forget(identity, subject.person_id, request_id=request_id)
    again = await forget(identity, subject.person_id, request_id=request_id)
    assert again == first
    # Another request for the same person answers the erasure that happened.
    other = await forget(identity, subject.person_id, requested_by="someone else")
    assert other.erasure.id == first.erasure.id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await forget(identity, subject.person_id, request_id=request_id, reason="other")
    assert status_details(caught.value).code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_forgotten_person_cannot_be_merged_or_unmerged(identity: Identity) -> None:
    a, b = unique("a-"), unique("b-")
    await resolve(identity, ident("device_id", a))
    merged = await resolve(identity, ident("anonymous_id", b))
    await resolve(identity, ident("device_id", a), ident("anonymous_id", b))
    other = await resolve(identity, ident("device_id", unique()))
    await forget(identity, merged.person_id)

    for call in (
        unmerge(identity, merged.person_id),
        merge_persons(identity, other.person_id, merged.person_id),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        details = status_details(caught.value)
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.error_info is not None and details.error_info.reason == "PERSON_FORGOTTEN"


async def test_the_new_person_policy_starts_an_unlinked_person_and_keeps_the_tombstone(
    new_person_policy: Identity,
) -> None:
    identity = new_person_policy
    email = f"{unique('back')}@example.com"
    first = await resolve(identity, ident("email", email), ident("device_id", unique()))
    await forget(identity, first.person_id)

    again = await resolve(identity, ident("email", email))

    assert again.created and again.person_id != first.person_id and not again.ignored_identifiers
    assert list((await person(identity, again.person_id)).merged_person_ids) == []
    hashes = await _rows(
        identity, "SELECT hash FROM tombstones WHERE hash = :h", h=_tombstone("email", email)
    )
    assert len(hashes) == 1
    second = await forget(identity, again.person_id)
    assert second.erasure.identifier_count == 1
    assert (
        len(
            await _rows(identity, "SELECT hash FROM tombstones WHERE hash = :h", h=_tombstone("email", email))
        )
        == 1
    )


async def test_forgetting_a_split_off_person_scrubs_it_from_others_lineage(identity: Identity) -> None:
    s, y, z = unique("s-"), f"{unique('y')}@example.com", unique("z-")
    survivor = await resolve(identity, ident("device_id", s))
    split_off = await resolve(identity, ident("email", y))
    await resolve(identity, ident("anonymous_id", z))
    await resolve(identity, ident("device_id", s), ident("email", y))
    await resolve(identity, ident("email", y), ident("anonymous_id", z))
    await unmerge(identity, split_off.person_id)

    await forget(identity, split_off.person_id)

    merges = await _rows(
        identity,
        "SELECT cause_identifiers::text AS cause FROM merges WHERE survivor_id = :id",
        id=uuid.UUID(survivor.person_id),
    )
    assert len(merges) == 1 and z in merges[0].cause and y not in merges[0].cause
    everything = await _rows(
        identity,
        "SELECT count(*) AS n FROM idempotency_keys WHERE position(convert_to(:y, 'UTF8') in response) > 0",
        y=y,
    )
    assert everything[0].n == 0
    assert pairs((await person(identity, survivor.person_id)).identifiers) == {
        ("device_id", s),
        ("anonymous_id", z),
    }


async def test_forgetting_deletes_the_matchers_records_of_the_person(identity: Identity) -> None:
    survivor, merged, _ = await _forgotten_customer(identity)
    record = NormalisedRecord(given_name="ada", surname="lovelace", date_of_birth="18151210", postcode="w1")
    async with identity.runtime.sessions() as session, session.begin():
        await MatchRepository(session).add_records(
            [
                StoredRecord(uuid.uuid4(), uuid.UUID(survivor), record, ("postcode:w1",)),
                StoredRecord(uuid.uuid4(), uuid.UUID(merged), record, ("postcode:w1",)),
            ],
            source="store_signup",
            now=datetime.now(UTC),
        )
    ids = [uuid.UUID(survivor), uuid.UUID(merged)]
    assert (
        len(await _rows(identity, "SELECT 1 FROM person_records WHERE person_id = ANY(:ids)", ids=ids)) == 2
    )

    await forget(identity, survivor)

    assert await _rows(identity, "SELECT 1 FROM person_records WHERE person_id = ANY(:ids)", ids=ids) == []
