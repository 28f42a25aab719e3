"""Bad input answers with the right status and field violations, and writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni_kit.errors import StatusDetails, status_details

from .support import Identity, ident, resolve, unique

PERSON = "01890a5d-ac96-774b-bcce-b302099a8057"

TABLES = (
    "persons",
    "identifiers",
    "merges",
    "refused_links",
    "tombstones",
    "erasures",
    "idempotency_keys",
    "outbox",
)


async def _counts(identity: Identity) -> dict[str, int]:
    async with identity.runtime.engine.connect() as connection:
        return {
            table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
            for table in TABLES
        }


@pytest.fixture
async def nothing_written(identity: Identity) -> AsyncIterator[None]:
    """Fails the test if any table of the graph or the outbox changed."""
    before = await _counts(identity)
    yield
    assert await _counts(identity) == before


async def _resolve_error(
    identity: Identity, *identifiers: common_pb2.Identifier, source: str = ""
) -> StatusDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.ResolvePerson(
            identity_pb2.ResolvePersonRequest(identifiers=list(identifiers), source=source)
        )
    return status_details(caught.value)


async def test_resolve_without_identifiers_is_refused(identity: Identity, nothing_written: None) -> None:
    details = await _resolve_error(identity)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"identifiers"}
    assert details.error_info is not None
    assert details.error_info.domain == "omni.identity"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        pytest.param(ident("passport", "X1234"), "identifiers[1].type", id="unknown-type"),
        pytest.param(ident("", "X1234"), "identifiers[1].type", id="missing-type"),
        pytest.param(ident("email", "ada(at)example.com"), "identifiers[1].value", id="malformed-email"),
        pytest.param(ident("email", "ada@localhost"), "identifiers[1].value", id="email-without-domain"),
        pytest.param(ident("phone", "12345"), "identifiers[1].value", id="malformed-phone"),
        pytest.param(ident("phone", "+1 000 000 0000"), "identifiers[1].value", id="invalid-phone-number"),
        pytest.param(ident("phone", "call me maybe"), "identifiers[1].value", id="phone-not-a-number"),
        pytest.param(ident("anonymous_id", "undefined"), "identifiers[1].value", id="blocked-value"),
        pytest.param(ident("device_id", " NULL "), "identifiers[1].value", id="blocked-value-any-case"),
        pytest.param(ident("loyalty_card", "0000-0000"), "identifiers[1].value", id="blocked-pattern"),
        pytest.param(ident("email", "noreply@shop.example"), "identifiers[1].value", id="blocked-email"),
        pytest.param(ident("user_id", "   "), "identifiers[1].value", id="blank-value"),
        pytest.param(ident("user_id", "u" * 257), "identifiers[1].value", id="oversize-value"),
        pytest.param(ident("email", "a" * 250 + "@example.com"), "identifiers[1].value", id="oversize-email"),
        pytest.param(ident("user_id", "u-\x00-1"), "identifiers[1].value", id="nul-in-value"),
        pytest.param(
            ident("device_id", "dev\x1b[0m"), "identifiers[1].value", id="control-character-in-value"
        ),
        pytest.param(ident("email", "ada\x00@example.com"), "identifiers[1].value", id="nul-in-email"),
    ],
)
async def test_a_bad_identifier_refuses_the_whole_request(
    identity: Identity, nothing_written: None, bad: common_pb2.Identifier, field: str
) -> None:
    details = await _resolve_error(identity, ident("email", f"{unique('ok')}@example.com"), bad)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {field}


async def test_every_bad_identifier_is_named(identity: Identity, nothing_written: None) -> None:
    details = await _resolve_error(
        identity,
        ident("email", "nope"),
        ident("anonymous_id", unique()),
        ident("phone", "1"),
        ident("x", "y"),
    )
    assert details.fields == {"identifiers[0].value", "identifiers[2].value", "identifiers[3].type"}


async def test_too_many_identifiers_are_refused(identity: Identity, nothing_written: None) -> None:
    details = await _resolve_error(identity, *(ident("device_id", unique()) for _ in range(101)))
    assert details.fields == {"identifiers"}


async def test_an_oversize_source_is_refused(identity: Identity, nothing_written: None) -> None:
    details = await _resolve_error(identity, ident("device_id", unique()), source="s" * 129)
    assert details.fields == {"source"}


@pytest.mark.parametrize("source", ["web\x00", "pos\n2"], ids=["nul", "line-break"])
async def test_a_source_with_control_characters_is_refused(
    identity: Identity, nothing_written: None, source: str
) -> None:
    details = await _resolve_error(identity, ident("device_id", unique()), source=source)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"source"}


async def test_a_bad_single_resolve_does_not_fail_the_calls_resolved_with_it(identity: Identity) -> None:
    # Single resolves arriving together share one transaction: a value the database cannot store must be
    # refused before it joins them, or every call of its group would fail with it.
    good = [
        identity.stub.ResolvePerson(
            identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique())])
        )
        for _ in range(30)
    ]
    bad = identity.stub.ResolvePerson(
        identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique() + "\x00")])
    )
    results = await asyncio.gather(*good[:15], bad, *good[15:], return_exceptions=True)
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failed) == 1
    assert status_details(failed[0]).fields == {"identifiers[0].value"}
    assert all(
        isinstance(r, identity_pb2.ResolvePersonResponse) and r.resolution.created
        for r in results
        if r not in failed
    )


async def test_a_batch_with_one_bad_request_writes_nothing(identity: Identity, nothing_written: None) -> None:
    good = identity_pb2.ResolvePersonRequest(identifiers=[ident("anonymous_id", unique())])
    bad = identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique()), ident("phone", "555")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(
                requests=[good, good, bad, identity_pb2.ResolvePersonRequest()]
            )
        )
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"requests[2].identifiers[1].value", "requests[3].identifiers"}


async def test_an_empty_batch_is_refused(identity: Identity, nothing_written: None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchResolvePersons(identity_pb2.BatchResolvePersonsRequest())
    assert status_details(caught.value).fields == {"requests"}


async def test_a_batch_over_the_limit_is_refused(identity: Identity, nothing_written: None) -> None:
    request = identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique())])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(requests=[request] * 1001)
        )
    assert status_details(caught.value).fields == {"requests"}


async def test_a_batch_with_too_many_identifiers_in_all_is_refused(
    identity: Identity, nothing_written: None
) -> None:
    request = identity_pb2.ResolvePersonRequest(identifiers=[ident("device_id", unique()) for _ in range(11)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(requests=[request] * 1000)
        )
    assert status_details(caught.value).fields == {"requests"}


@pytest.mark.parametrize("person_id", ["", "not-a-uuid", "1234"], ids=["missing", "malformed", "number"])
async def test_get_person_with_a_malformed_id_is_refused(identity: Identity, person_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=person_id))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"person_id"}


@pytest.mark.parametrize(
    ("person_ids", "fields"),
    [
        ([], {"person_ids"}),
        (["01890a5d-ac96-774b-bcce-b302099a8057", "not-a-uuid"], {"person_ids[1]"}),
        (["01890a5d-ac96-774b-bcce-b302099a8057"] * 501, {"person_ids"}),
    ],
    ids=["none", "malformed", "too-many"],
)
async def test_batch_get_persons_with_bad_ids_is_refused(
    identity: Identity, person_ids: list[str], fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.BatchGetPersons(identity_pb2.BatchGetPersonsRequest(person_ids=person_ids))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == fields


async def test_get_person_with_an_unknown_id_is_not_found(identity: Identity) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.GetPerson(
            identity_pb2.GetPersonRequest(person_id="01890a5d-ac96-774b-bcce-b302099a8057")
        )
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None
    assert details.error_info.reason == "PERSON_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"person_id": "01890a5d-ac96-774b-bcce-b302099a8057"}


async def test_lookup_without_an_identifier_is_refused(identity: Identity) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.LookupPerson(identity_pb2.LookupPersonRequest())
    assert status_details(caught.value).fields == {"identifier"}


async def test_lookup_of_a_malformed_identifier_is_refused(identity: Identity) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.LookupPerson(identity_pb2.LookupPersonRequest(identifier=ident("email", "nope")))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"identifier.value"}


async def test_lookup_of_an_unknown_identifier_is_not_found_and_creates_nothing(
    identity: Identity, nothing_written: None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=ident("device_id", unique("unseen-")))
        )
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None
    assert details.error_info.reason == "IDENTIFIER_NOT_FOUND"
    # The type only: an identifier's value is personal data, not for logs and error reports.
    assert dict(details.error_info.metadata) == {"identifier_type": "device_id"}


async def test_a_good_request_after_bad_ones_still_works(identity: Identity) -> None:
    resolution = await resolve(identity, ident("device_id", unique()))
    assert resolution.created


async def _call_error(call: object) -> StatusDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return status_details(caught.value)


async def _merged_pair(identity: Identity) -> tuple[str, str]:
    """A survivor and a person merged into it."""
    a, b = unique("a-"), unique("b-")
    survivor = await resolve(identity, ident("device_id", a))
    merged = await resolve(identity, ident("anonymous_id", b))
    await resolve(identity, ident("device_id", a), ident("anonymous_id", b))
    return survivor.person_id, merged.person_id


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "r" * 129}, {"request_id"}),
        ({"request_id": "line\nbreak"}, {"request_id"}),
        ({"survivor_person_id": "nope"}, {"survivor_person_id"}),
        ({"merged_person_id": ""}, {"merged_person_id"}),
        ({"merged_person_id": PERSON}, {"merged_person_id"}),
        ({"reason": "r" * 513}, {"reason"}),
        ({"reason": "wrong\x00merge"}, {"reason"}),
        ({"request_id": "r\x00"}, {"request_id"}),
    ],
    ids=[
        "missing-request-id",
        "oversize-request-id",
        "unprintable-request-id",
        "malformed-survivor",
        "missing-merged",
        "merge-with-itself",
        "oversize-reason",
        "nul-in-reason",
        "nul-in-request-id",
    ],
)
async def test_bad_merge_requests_are_refused(
    identity: Identity, nothing_written: None, fields: dict[str, str], bad: set[str]
) -> None:
    request = {"request_id": unique(), "survivor_person_id": PERSON, "merged_person_id": str(uuid.uuid4())}
    details = await _call_error(
        identity.stub.MergePersons(identity_pb2.MergePersonsRequest(**(request | fields)))
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad


async def test_a_merge_of_two_ids_of_one_person_is_a_merge_with_itself(identity: Identity) -> None:
    survivor, merged = await _merged_pair(identity)
    before = await _counts(identity)
    details = await _call_error(
        identity.stub.MergePersons(
            identity_pb2.MergePersonsRequest(
                request_id=unique(), survivor_person_id=survivor, merged_person_id=merged
            )
        )
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"merged_person_id"}
    assert await _counts(identity) == before


async def test_a_merge_of_an_unknown_person_is_not_found(identity: Identity, nothing_written: None) -> None:
    details = await _call_error(
        identity.stub.MergePersons(
            identity_pb2.MergePersonsRequest(
                request_id=unique(), survivor_person_id=PERSON, merged_person_id=str(uuid.uuid4())
            )
        )
    )
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None
    assert details.error_info.reason == "PERSON_NOT_FOUND"
    # Both are unknown; the survivor is looked for first.
    assert dict(details.error_info.metadata) == {"person_id": PERSON, "field": "survivor_person_id"}


async def test_unmerge_of_a_person_never_merged_is_a_failed_precondition(identity: Identity) -> None:
    alone = await resolve(identity, ident("device_id", unique()))
    before = await _counts(identity)
    details = await _call_error(
        identity.stub.UnmergePerson(
            identity_pb2.UnmergePersonRequest(request_id=unique(), person_id=alone.person_id)
        )
    )
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None and details.error_info.reason == "PERSON_NOT_MERGED"
    assert await _counts(identity) == before


async def test_unmerge_of_a_survivor_is_a_failed_precondition(identity: Identity) -> None:
    survivor, _ = await _merged_pair(identity)
    before = await _counts(identity)
    details = await _call_error(
        identity.stub.UnmergePerson(
            identity_pb2.UnmergePersonRequest(request_id=unique(), person_id=survivor)
        )
    )
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await _counts(identity) == before


async def test_unmerge_of_an_unknown_person_is_not_found(identity: Identity, nothing_written: None) -> None:
    details = await _call_error(
        identity.stub.UnmergePerson(identity_pb2.UnmergePersonRequest(request_id=unique(), person_id=PERSON))
    )
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None and details.error_info.reason == "PERSON_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"person_id": PERSON}


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"person_id": "x"}, {"person_id"}),
        ({"request_id": ""}, {"request_id"}),
        ({"reason": "r" * 513}, {"reason"}),
    ],
    ids=["malformed-person-id", "missing-request-id", "oversize-reason"],
)
async def test_bad_unmerge_requests_are_refused(
    identity: Identity, nothing_written: None, fields: dict[str, str], bad: set[str]
) -> None:
    request = {"request_id": unique(), "person_id": PERSON} | fields
    details = await _call_error(identity.stub.UnmergePerson(identity_pb2.UnmergePersonRequest(**request)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"person_id": ""}, {"person_id"}),
        ({"requested_by": "  "}, {"requested_by"}),
        ({"requested_by": "x" * 257}, {"requested_by"}),
        ({"request_id": ""}, {"request_id"}),
        ({"reason": "r" * 513}, {"reason"}),
        ({"requested_by": "dpo\x07"}, {"requested_by"}),
    ],
    ids=[
        "missing-person-id",
        "missing-requested-by",
        "oversize-requested-by",
        "missing-request-id",
        "oversize-reason",
        "control-character-in-requested-by",
    ],
)
async def test_bad_forget_requests_are_refused(
    identity: Identity, nothing_written: None, fields: dict[str, str], bad: set[str]
) -> None:
    request = {"request_id": unique(), "person_id": PERSON, "requested_by": "dpo"} | fields
    details = await _call_error(identity.stub.ForgetPerson(identity_pb2.ForgetPersonRequest(**request)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == bad


async def test_forget_of_an_unknown_person_is_not_found(identity: Identity, nothing_written: None) -> None:
    details = await _call_error(
        identity.stub.ForgetPerson(
            identity_pb2.ForgetPersonRequest(request_id=unique(), person_id=PERSON, requested_by="dpo")
        )
    )
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None and details.error_info.reason == "PERSON_NOT_FOUND"
    assert dict(details.error_info.metadata) == {"person_id": PERSON}


@pytest.mark.parametrize("method", ["ListPersonIdentifiers", "ListRefusedLinks"])
async def test_bad_list_requests_are_refused(identity: Identity, method: str) -> None:
    alone = await resolve(identity, ident("device_id", unique()))
    request_type = getattr(identity_pb2, f"{method}Request")
    merges_token = "bTEAAAAAAAAAAAAAAAAAAAAA"  # a ListPersonMerges token is not a token of these lists
    for fields, bad in (
        ({"person_id": "nope"}, "person_id"),
        ({"person_id": alone.person_id, "page_size": -1}, "page_size"),
        ({"person_id": alone.person_id, "page_token": merges_token}, "page_token"),
    ):
        details = await _call_error(getattr(identity.stub, method)(request_type(**fields)))
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.fields == {bad}
    details = await _call_error(getattr(identity.stub, method)(request_type(person_id=PERSON)))
    assert details.code == grpc.StatusCode.NOT_FOUND
