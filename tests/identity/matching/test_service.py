"""MatchingService over gRPC with real PostgreSQL: create, link, review, batches, lineage, idempotency."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from omni.identity.v1 import identity_pb2, matching_pb2
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from ...idempotency import assert_key_reused
from .conftest import count_rows, running_matching
from .support import MatchingServer, person, unique_postcode, with_fields

LINKED = matching_pb2.MATCH_DECISION_LINKED
REVIEW = matching_pb2.MATCH_DECISION_REVIEW
NEW_PERSON = matching_pb2.MATCH_DECISION_NEW_PERSON


async def match(
    server: MatchingServer, record: matching_pb2.PersonRecord, **kwargs: str
) -> matching_pb2.MatchResult:
    """MatchRecord and return the result."""
    response = await server.stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record, **kwargs))
    return response.result


async def test_an_unknown_record_creates_a_person_and_files_the_record(server: MatchingServer) -> None:
    records, keys, decisions = (
        await count_rows(server, "person_records"),
        await count_rows(server, "person_record_keys"),
        await count_rows(server, "match_decisions"),
    )
    result = await match(server, person(), source="pos")
    assert result.decision == NEW_PERSON
    assert uuid.UUID(result.person_id) and uuid.UUID(result.record_id) and uuid.UUID(result.decision_id)
    assert result.model_version == 0
    assert await count_rows(server, "person_records") == records + 1
    # A complete record is filed under all twelve of its blocking keys.
    assert await count_rows(server, "person_record_keys") == keys + 12
    assert await count_rows(server, "match_decisions") == decisions + 1


async def test_a_close_record_links_above_the_threshold(server: MatchingServer) -> None:
    original = person(given_name="Michaela", surname="Neumann")
    created = await match(server, original)
    typo = with_fields(original, surname="Neuman", street_number="", address_1=original.address_1.lower())
    result = await match(server, typo, source="store_signup")
    assert result.decision == LINKED
    assert result.person_id == created.person_id
    assert result.record_id != created.record_id
    assert result.probability >= 0.95
    best = result.candidates[0]
    assert best.person_id == created.person_id and best.record_id == created.record_id
    levels = {c.field: c.level for c in best.comparisons}
    assert levels["surname"] == "jaro_winkler_0.92"
    assert levels["given_name"] == "exact" and levels["address_1"] == "exact"
    assert "street_number" not in levels
    assert best.match_weight > 0 and all(c.weight > 0 for c in best.comparisons if c.level == "exact")


async def test_the_same_record_again_links_without_filing_a_copy(server: MatchingServer) -> None:
    record = person()
    created = await match(server, record)
    before = await count_rows(server, "person_records")
    again = await match(server, record)
    assert again.decision == LINKED
    assert again.record_id == created.record_id
    assert await count_rows(server, "person_records") == before


async def test_a_partial_match_between_the_thresholds_goes_to_review(server: MatchingServer) -> None:
    original = person()
    created = await match(server, original)
    partial = matching_pb2.PersonRecord(
        given_name=original.given_name, surname=original.surname, postcode=original.postcode
    )
    records = await count_rows(server, "person_records")
    result = await match(server, partial, source="pos")
    assert result.decision == REVIEW
    assert 0.6 <= result.probability < 0.95
    assert result.person_id == "" and result.record_id == ""
    assert result.candidates[0].person_id == created.person_id
    assert await count_rows(server, "person_records") == records
    listed = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=created.person_id)
    )
    assert [d.decision for d in listed.decisions] == [NEW_PERSON, REVIEW]
    review = listed.decisions[1]
    assert review.id == result.decision_id
    assert review.link_threshold == 0.95 and review.review_threshold == 0.6
    assert review.record.surname == original.surname.lower() and review.source == "pos"


async def test_a_relative_at_the_same_address_goes_to_review(server: MatchingServer) -> None:
    mother = person()
    await match(server, mother)
    daughter = with_fields(
        mother, given_name="Zoe", date_of_birth=matching_pb2.CalendarDate(year=2001, month=7, day=30)
    )
    assert (await match(server, daughter)).decision == REVIEW


async def test_a_batch_is_decided_in_order(server: MatchingServer) -> None:
    first = person()
    second = with_fields(first, given_name=first.given_name + "a")
    stranger = person()
    response = await server.stub.BatchMatchRecords(
        matching_pb2.BatchMatchRecordsRequest(records=[first, second, stranger], source="import")
    )
    a, b, c = response.results
    assert (a.decision, b.decision, c.decision) == (NEW_PERSON, LINKED, NEW_PERSON)
    assert b.person_id == a.person_id != c.person_id


async def test_lineage_lists_a_persons_decisions_page_by_page(server: MatchingServer) -> None:
    record = person()
    created = await match(server, record, source="web")
    linked = await match(server, with_fields(record, address_2="Flat 9"), source="pos")
    assert linked.decision == LINKED
    first = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=created.person_id, page_size=1)
    )
    assert [d.id for d in first.decisions] == [created.decision_id]
    assert first.next_page_token
    second = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(
            person_id=created.person_id, page_size=1, page_token=first.next_page_token
        )
    )
    [decision] = second.decisions
    assert decision.id == linked.decision_id and decision.decision == LINKED
    assert decision.person_id == created.person_id and decision.source == "pos"
    assert decision.model_version == 0 and decision.probability == pytest.approx(linked.probability)
    assert decision.candidates[0].record_id == created.record_id
    assert decision.record.date_of_birth.year == 1971 and decision.HasField("decide_time")
    assert not second.next_page_token


async def test_a_repeated_request_id_returns_the_first_result(server: MatchingServer) -> None:
    record = person()
    first = await match(server, record, request_id="import-7-row-1")
    rows = await count_rows(server, "match_decisions"), await count_rows(server, "person_records")
    again = await match(server, record, request_id="import-7-row-1")
    assert again == first
    assert (await count_rows(server, "match_decisions"), await count_rows(server, "person_records")) == rows
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await match(server, person(), request_id="import-7-row-1")
    assert_key_reused(raised.value, "import-7-row-1")


async def test_concurrent_records_of_one_new_person_create_it_once(server: MatchingServer) -> None:
    record = person()
    variants = [with_fields(record, address_2=f"Unit {i}") for i in range(8)]
    results = await asyncio.gather(*(match(server, v) for v in variants))
    assert [r.decision for r in results].count(NEW_PERSON) == 1
    assert len({r.person_id for r in results}) == 1


async def test_the_model_in_use_starts_as_the_built_in_one(server: MatchingServer) -> None:
    model = (await server.stub.GetMatchModel(matching_pb2.GetMatchModelRequest())).model
    assert model.version == 0 and not model.HasField("create_time")
    assert (model.link_threshold, model.review_threshold) == (0.95, 0.6)
    fields = {f.field: f for f in model.fields}
    assert set(fields) >= {"given_name", "surname", "date_of_birth", "postcode", "address_1"}
    surname = fields["surname"]
    assert [level.level for level in surname.levels] == [
        "exact",
        "jaro_winkler_0.92",
        "jaro_winkler_0.80",
        "else",
    ]
    assert surname.levels[0].weight > 0 > surname.levels[-1].weight


async def test_training_without_duplicates_is_refused_and_keeps_the_model(server: MatchingServer) -> None:
    for _ in range(3):
        postcode = unique_postcode()
        await server.stub.BatchMatchRecords(
            matching_pb2.BatchMatchRecordsRequest(records=[person(postcode=postcode) for _ in range(30)])
        )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.TrainMatchModel(matching_pb2.TrainMatchModelRequest())
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.error_info is not None and details.error_info.reason == "TOO_FEW_DUPLICATES"
    assert await count_rows(server, "match_models") == 0


async def test_identity_is_served_by_the_same_server(server: MatchingServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=str(uuid.uuid4())))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.runtime.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="omni.identity.v1.MatchingService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await reflection.read()
        await reflection.done_writing()
    names = {service.name for service in reply.list_services_response.service}
    assert {"omni.identity.v1.IdentityService", "omni.identity.v1.MatchingService"} <= names


async def test_the_thresholds_and_the_relatives_guard_are_settings_of_the_running_service(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    # The same records as the two tests above, on a server told to link from 0.5 and to link relatives.
    async with running_matching(
        postgres, nats_server, link_threshold=0.5, review_threshold=0.3, review_relatives="false"
    ) as lenient:
        original = person()
        created = await match(lenient, original)
        partial = matching_pb2.PersonRecord(
            given_name=original.given_name, surname=original.surname, postcode=original.postcode
        )
        result = await match(lenient, partial)
        assert result.decision == LINKED and result.person_id == created.person_id
        assert 0.5 <= result.probability < 0.95
        [_, decision] = (
            await lenient.stub.ListMatchDecisions(
                matching_pb2.ListMatchDecisionsRequest(person_id=created.person_id)
            )
        ).decisions
        assert decision.link_threshold == 0.5 and decision.review_threshold == 0.3

        mother = person()
        await match(lenient, mother)
        daughter = with_fields(
            mother, given_name="Zoe", date_of_birth=matching_pb2.CalendarDate(year=2001, month=7, day=30)
        )
        assert (await match(lenient, daughter)).decision == LINKED
