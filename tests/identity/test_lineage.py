"""ListPersonMerges: a person's lineage, paged, and the bad inputs it refuses."""

from __future__ import annotations

import uuid

import grpc
import pytest

from omni.identity.v1 import events_pb2, identity_pb2
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from .support import EventLog, Identity, ident, merge_persons, pairs, resolve, unique


async def lineage(identity: Identity, person_id: str, page_size: int = 0) -> list[identity_pb2.Merge]:
    """Every merge of a person's lineage, fetched page by page."""
    merges: list[identity_pb2.Merge] = []
    token = ""
    while True:
        response = await identity.stub.ListPersonMerges(
            identity_pb2.ListPersonMergesRequest(person_id=person_id, page_size=page_size, page_token=token)
        )
        merges += response.merges
        token = response.next_page_token
        if not token:
            return merges


async def test_the_lineage_lists_every_merge_oldest_first_with_its_cause(identity: Identity) -> None:
    a, b, c = unique("a-"), unique("b-"), unique("c-")
    first = await resolve(identity, ident("user_id", a))
    second = await resolve(identity, ident("device_id", b))
    third = await resolve(identity, ident("anonymous_id", c))
    await resolve(identity, ident("device_id", b), ident("anonymous_id", c), source="app")
    await resolve(identity, ident("user_id", a), ident("device_id", b), source="pos")

    merges = await lineage(identity, first.person_id)
    assert [(m.survivor_person_id, m.merged_person_id, m.source) for m in merges] == [
        (second.person_id, third.person_id, "app"),
        (first.person_id, second.person_id, "pos"),
    ]
    assert pairs(merges[0].cause_identifiers) == {("device_id", b), ("anonymous_id", c)}
    assert merges[0].merge_time.ToDatetime() <= merges[1].merge_time.ToDatetime()
    assert all(uuid.UUID(m.id).version == 7 for m in merges)
    # A merged id lists its survivor's lineage; pages of one give the same list.
    assert await lineage(identity, third.person_id, page_size=1) == merges


async def test_a_person_never_merged_has_an_empty_lineage(identity: Identity) -> None:
    person = await resolve(identity, ident("device_id", unique()))
    response = await identity.stub.ListPersonMerges(
        identity_pb2.ListPersonMergesRequest(person_id=person.person_id)
    )
    assert list(response.merges) == [] and response.next_page_token == ""


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"person_id": "nope"}, "person_id"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
    ],
    ids=["malformed-person-id", "negative-page-size", "foreign-page-token"],
)
async def test_bad_lineage_requests_are_refused(
    identity: Identity, request_fields: dict[str, object], field: str
) -> None:
    person = await resolve(identity, ident("device_id", unique()))
    fields: dict[str, object] = {"person_id": person.person_id, **request_fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.ListPersonMerges(identity_pb2.ListPersonMergesRequest(**fields))  # type: ignore[arg-type]
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {field}


async def test_the_lineage_of_an_unknown_person_is_not_found(identity: Identity) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.ListPersonMerges(
            identity_pb2.ListPersonMergesRequest(person_id=str(uuid.uuid4()))
        )
    assert status_details(caught.value).code == grpc.StatusCode.NOT_FOUND


async def test_a_merge_names_the_request_that_caused_it(identity: Identity, events: EventLog) -> None:
    cookie, device = unique("c-"), unique("d-")
    web = await resolve(identity, ident("anonymous_id", cookie), source="web")
    app = await resolve(identity, ident("device_id", device), source="app")
    linked = await resolve(
        identity,
        ident("anonymous_id", cookie),
        ident("device_id", device),
        source="web",
        reference="web/evt-42",
    )
    assert list(linked.merged_person_ids) == [app.person_id]

    [merge] = await lineage(identity, web.person_id)
    assert (merge.reference, merge.source) == ("web/evt-42", "web")
    [envelope] = [e for e in await events.wait_for("identity.persons_merged") if e.person_id == web.person_id]
    assert unpack(envelope, events_pb2.PersonsMergedEvent).reference == "web/evt-42"

    # An operator's merge is referenced by the call's request id.
    other = await resolve(identity, ident("user_id", unique("u-")))
    operated = await merge_persons(identity, web.person_id, other.person_id, request_id="ticket-7")
    assert operated.merge.reference == "ticket-7"
    assert [m.reference for m in await lineage(identity, web.person_id)] == ["web/evt-42", "ticket-7"]


@pytest.mark.parametrize("reference", ["r" * 257, "evt\x00"], ids=["oversize", "control-character"])
async def test_a_bad_reference_is_refused(identity: Identity, reference: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(
                requests=[
                    identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique())]),
                    identity_pb2.ResolvePersonRequest(
                        identifiers=[ident("device_id", unique())], reference=reference
                    ),
                ]
            )
        )
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"requests[1].reference"}
