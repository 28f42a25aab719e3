"""UnmergePerson and MergePersons over gRPC: splits along the lineage, events, idempotency, refusals."""

from __future__ import annotations

import grpc
import pytest

from omni.identity.v1 import events_pb2, identity_pb2
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from ..idempotency import purge_aged
from .support import (
    EventLog,
    Identity,
    ident,
    identifiers_of,
    merge_persons,
    pairs,
    person,
    resolve,
    unique,
    unmerge,
)


async def lineage(identity: Identity, person_id: str) -> list[identity_pb2.Merge]:
    response = await identity.stub.ListPersonMerges(
        identity_pb2.ListPersonMergesRequest(person_id=person_id, page_size=1000)
    )
    return list(response.merges)


async def test_an_unmerge_splits_the_person_back_along_the_lineage(
    identity: Identity, events: EventLog
) -> None:
    cookie, cookie2, device = unique("c-"), unique("c2-"), unique("d-")
    email, push, phone = f"{unique('m')}@example.com", unique("p-"), "+14155550163"
    web = await resolve(identity, ident("anonymous_id", cookie), source="web")
    app = await resolve(identity, ident("device_id", device), source="app")
    linked = await resolve(
        identity,
        ident("anonymous_id", cookie),
        ident("device_id", device),
        ident("email", email),
        source="web",
    )
    assert linked.person_id == web.person_id and list(linked.merged_person_ids) == [app.person_id]
    # After the merge: the app's device brings a push token, the push token a phone, the web cookie another.
    await resolve(identity, ident("device_id", device), ident("push_token", push), source="app")
    await resolve(identity, ident("push_token", push), ident("phone", phone), source="app")
    await resolve(identity, ident("anonymous_id", cookie), ident("anonymous_id", cookie2), source="web")

    response = await unmerge(identity, app.person_id, reason="two people on one tablet")

    assert pairs(response.moved_identifiers) == {
        ("device_id", device),
        ("push_token", push),
        ("phone", phone),
    }
    assert response.restored_person.id == app.person_id
    assert pairs(response.restored_person.identifiers) == pairs(response.moved_identifiers)
    assert response.survivor_person.id == web.person_id
    # The email came with identifiers of both sides: there is no telling whose it is, so it stays.
    assert pairs(response.survivor_person.identifiers) == {
        ("anonymous_id", cookie),
        ("anonymous_id", cookie2),
        ("email", email),
    }
    assert response.merge.merged_person_id == app.person_id
    assert response.merge.HasField("undo_time") and response.merge.undo_reason == "two people on one tablet"
    assert (await person(identity, app.person_id)).id == app.person_id
    assert list((await person(identity, web.person_id)).merged_person_ids) == []
    assert (await resolve(identity, ident("device_id", device))).person_id == app.person_id

    [merge] = await lineage(identity, web.person_id)
    assert (
        merge.undo_time == response.merge.undo_time
        and merge.rule == identity_pb2.MERGE_RULE_SHARED_IDENTIFIERS
    )
    # The restored person's own lineage keeps the merge that took it away, undone.
    assert [m.id for m in await lineage(identity, app.person_id)] == [merge.id]
    listed = {
        (i.identifier.type, i.identifier.value): i for i in await identifiers_of(identity, app.person_id)
    }
    assert listed["device_id", device].attachment == identity_pb2.ATTACHMENT_NEW_PERSON
    assert listed["push_token", push].attachment == identity_pb2.ATTACHMENT_UNMERGE
    assert pairs(listed["push_token", push].via_identifiers) == {("device_id", device)}
    assert pairs(listed["phone", phone].via_identifiers) == {("push_token", push)}
    assert {i.attached_person_id for i in listed.values()} == {app.person_id}

    [envelope] = [
        e for e in await events.wait_for("identity.persons_unmerged") if e.person_id == app.person_id
    ]
    payload = unpack(envelope, events_pb2.PersonsUnmergedEvent)
    assert payload.survivor_person_id == web.person_id and payload.restored_person_id == app.person_id
    assert pairs(payload.moved_identifiers) == pairs(response.moved_identifiers)
    assert payload.merge_id == merge.id and payload.reason == "two people on one tablet"


async def test_persons_merged_into_the_restored_person_come_back_with_it(identity: Identity) -> None:
    s, m, m2 = unique("s-"), unique("m-"), unique("m2-")
    survivor = await resolve(identity, ident("loyalty_card", s))
    merged = await resolve(identity, ident("device_id", m))
    merged_earlier = await resolve(identity, ident("anonymous_id", m2))
    await resolve(identity, ident("device_id", m), ident("anonymous_id", m2))
    await resolve(identity, ident("loyalty_card", s), ident("device_id", m))

    response = await unmerge(identity, merged.person_id)

    assert pairs(response.restored_person.identifiers) == {("device_id", m), ("anonymous_id", m2)}
    assert list(response.restored_person.merged_person_ids) == [merged_earlier.person_id]
    assert (await person(identity, merged_earlier.person_id)).id == merged.person_id
    assert pairs((await person(identity, survivor.person_id)).identifiers) == {("loyalty_card", s)}


async def test_a_person_is_split_from_the_live_person_its_survivor_was_merged_into(
    identity: Identity,
) -> None:
    root, middle, leaf = unique("r-"), unique("mid-"), unique("leaf-")
    first = await resolve(identity, ident("pos_customer_id", root))
    second = await resolve(identity, ident("device_id", middle))
    third = await resolve(identity, ident("anonymous_id", leaf))
    await resolve(identity, ident("device_id", middle), ident("anonymous_id", leaf))
    await resolve(identity, ident("pos_customer_id", root), ident("device_id", middle))

    response = await unmerge(identity, third.person_id)

    assert response.survivor_person.id == first.person_id
    assert pairs(response.moved_identifiers) == {("anonymous_id", leaf)}
    assert set(response.survivor_person.merged_person_ids) == {second.person_id}


async def test_an_unmerge_is_idempotent_by_request_id(identity: Identity) -> None:
    a, b = unique("a-"), unique("b-")
    await resolve(identity, ident("device_id", a))
    merged = await resolve(identity, ident("anonymous_id", b))
    await resolve(identity, ident("device_id", a), ident("anonymous_id", b))
    request_id = unique("rq-")

    first = await unmerge(identity, merged.person_id, request_id=request_id)
    again = await unmerge(identity, merged.person_id, request_id=request_id)
    assert again == first

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await unmerge(identity, merged.person_id, request_id=request_id, reason="something else")
    details = status_details(reused.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None and details.error_info.reason == "IDEMPOTENCY_KEY_REUSED"

    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await unmerge(identity, merged.person_id)
    details = status_details(twice.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None and details.error_info.reason == "PERSON_NOT_MERGED"


async def test_an_operator_answer_past_the_retention_is_purged(identity: Identity) -> None:
    a, b = unique("a-"), unique("b-")
    await resolve(identity, ident("device_id", a))
    merged = await resolve(identity, ident("anonymous_id", b))
    await resolve(identity, ident("device_id", a), ident("anonymous_id", b))
    request_id = unique("rq-")
    await unmerge(identity, merged.person_id, request_id=request_id)

    await purge_aged(identity.runtime, request_id)

    # Forgotten: the id now names a new call, which finds the person no longer merged.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await unmerge(identity, merged.person_id, request_id=request_id)
    details = status_details(again.value)
    assert details.error_info is not None and details.error_info.reason == "PERSON_NOT_MERGED"


async def test_a_person_unmerged_and_linked_again_is_merged_again(identity: Identity) -> None:
    a, b = unique("a-"), unique("b-")
    first = await resolve(identity, ident("device_id", a))
    second = await resolve(identity, ident("anonymous_id", b))
    await resolve(identity, ident("device_id", a), ident("anonymous_id", b))
    await unmerge(identity, second.person_id)

    again = await resolve(identity, ident("device_id", a), ident("anonymous_id", b))

    assert again.person_id == first.person_id and list(again.merged_person_ids) == [second.person_id]
    undone, standing = await lineage(identity, first.person_id)
    assert undone.HasField("undo_time") and not standing.HasField("undo_time")
    await unmerge(identity, second.person_id)
    assert pairs((await person(identity, second.person_id)).identifiers) == {("anonymous_id", b)}


async def test_an_operator_merges_two_persons_and_can_undo_it(identity: Identity, events: EventLog) -> None:
    a, b = unique("a-"), f"{unique('b')}@example.com"
    older = await resolve(identity, ident("device_id", a))
    newer = await resolve(identity, ident("email", b))

    # The operator chooses the survivor, even the newer person.
    response = await merge_persons(
        identity, newer.person_id, older.person_id, reason="same customer per call"
    )

    assert response.person.id == newer.person_id
    assert pairs(response.person.identifiers) == {("device_id", a), ("email", b)}
    assert response.merge.rule == identity_pb2.MERGE_RULE_OPERATOR
    assert response.merge.reason == "same customer per call" and response.merge.source == "operator"
    assert (await person(identity, older.person_id)).id == newer.person_id
    [envelope] = [
        e for e in await events.wait_for("identity.persons_merged") if e.person_id == newer.person_id
    ]
    payload = unpack(envelope, events_pb2.PersonsMergedEvent)
    assert list(payload.merged_person_ids) == [older.person_id] and payload.reason == "same customer per call"

    restored = await unmerge(identity, older.person_id)
    assert pairs(restored.moved_identifiers) == {("device_id", a)}


async def test_an_operator_merge_that_would_break_a_limit_is_refused(identity: Identity) -> None:
    first = await resolve(identity, ident("user_id", unique("u-")))
    second = await resolve(identity, ident("user_id", unique("u-")))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await merge_persons(identity, first.person_id, second.person_id)

    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None
    assert details.error_info.reason == "IDENTIFIER_LIMIT_EXCEEDED"
    assert details.error_info.metadata["identifier_type"] == "user_id"
    assert (await person(identity, second.person_id)).id == second.person_id


async def test_an_operator_merge_is_idempotent_by_request_id(identity: Identity) -> None:
    first = await resolve(identity, ident("device_id", unique()))
    second = await resolve(identity, ident("device_id", unique()))
    request_id = unique("rq-")

    done = await merge_persons(identity, first.person_id, second.person_id, request_id=request_id)
    again = await merge_persons(identity, first.person_id, second.person_id, request_id=request_id)

    assert again == done
    assert len(await lineage(identity, first.person_id)) == 1
