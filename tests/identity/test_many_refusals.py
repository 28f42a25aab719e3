"""Many refused identifiers in one BatchResolvePersons: the error stays small enough for gRPC's trailers, and a
caller asking for it has the refused sets named one by one while the others are resolved."""

from __future__ import annotations

import grpc
import pytest

from omni.identity.v1 import identity_pb2
from omni_kit.errors import MAX_DETAILS_BYTES, MAX_FIELD_VIOLATIONS, status_details

from .support import Identity, ident, unique


def _placeholder_set() -> identity_pb2.ResolvePersonRequest:
    # Addresses at the reserved .test domain are placeholders identity refuses (README, "Blocked values").
    return identity_pb2.ResolvePersonRequest(
        identifiers=[ident("email", f"{unique('p')}@shop.test") for _ in range(3)], source="web"
    )


def _good_set() -> identity_pb2.ResolvePersonRequest:
    return identity_pb2.ResolvePersonRequest(
        identifiers=[ident("anonymous_id", unique("a-")), ident("email", f"{unique('g')}@example.com")],
        source="web",
    )


async def test_thousands_of_refused_identifiers_answer_invalid_argument_with_capped_details(
    identity: Identity,
) -> None:
    # 3,000 violations: listed whole they were ~250 KB of trailers, past every gRPC metadata limit.
    request = identity_pb2.BatchResolvePersonsRequest(requests=[_placeholder_set() for _ in range(1000)])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.BatchResolvePersons(request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = status_details(refused.value)
    assert 0 < len(details.field_violations) <= MAX_FIELD_VIOLATIONS
    assert details.omitted_violations == 3000 - len(details.field_violations)
    # The first violations are kept, in request order, each naming its set.
    assert details.field_violations[0].field == "requests[0].identifiers[0].value"
    assert "placeholder" in details.field_violations[0].description
    trailer = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert len(trailer) <= MAX_DETAILS_BYTES


async def test_refused_sets_are_named_one_by_one_when_asked_and_the_others_resolved(
    identity: Identity,
) -> None:
    bad = set(range(0, 500, 5)) | set(range(1, 500, 5)) | set(range(2, 500, 5))  # 300 of 500
    sets = [_placeholder_set() if i in bad else _good_set() for i in range(500)]
    response = await identity.stub.BatchResolvePersons(
        identity_pb2.BatchResolvePersonsRequest(requests=sets, refuse_sets_individually=True)
    )

    assert len(response.resolutions) == 500
    assert [r.index for r in response.refusals] == sorted(bad)
    for refusal in response.refusals:
        assert [v.field for v in refusal.field_violations] == [f"identifiers[{k}].value" for k in range(3)]
        assert all("placeholder" in v.description for v in refusal.field_violations)
        assert refusal.omitted_violation_count == 0
        assert response.resolutions[refusal.index].person_id == ""
    resolved = [r for i, r in enumerate(response.resolutions) if i not in bad]
    assert all(r.person_id and r.created for r in resolved)
    assert len({r.person_id for r in resolved}) == 200


async def test_a_set_refused_individually_lists_at_most_the_capped_violations(identity: Identity) -> None:
    crowded = identity_pb2.ResolvePersonRequest(
        identifiers=[ident("email", f"{unique('p')}@shop.test") for _ in range(100)], source="web"
    )
    response = await identity.stub.BatchResolvePersons(
        identity_pb2.BatchResolvePersonsRequest(
            requests=[_good_set(), crowded], refuse_sets_individually=True
        )
    )
    [refusal] = response.refusals
    assert refusal.index == 1
    kept = len(refusal.field_violations)
    assert 0 < kept <= MAX_FIELD_VIOLATIONS
    assert kept + refusal.omitted_violation_count == 100
    assert response.resolutions[0].person_id


async def test_a_fault_of_the_whole_batch_still_fails_the_call_when_sets_are_refused_individually(
    identity: Identity,
) -> None:
    crowded = [
        identity_pb2.ResolvePersonRequest(
            identifiers=[ident("anonymous_id", unique("a-")) for _ in range(100)]
        )
        for _ in range(101)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(requests=crowded, refuse_sets_individually=True)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(refused.value).fields == {"requests"}
