"""Settling reviews: an operator files a REVIEW's record under a person of the review or a new person."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, matching_pb2
from omni_kit.errors import status_details

from .conftest import count_rows
from .support import TABLES, MatchingServer, person, unique_word

LINKED = matching_pb2.MATCH_DECISION_LINKED
REVIEW = matching_pb2.MATCH_DECISION_REVIEW
NEW_PERSON = matching_pb2.MATCH_DECISION_NEW_PERSON
LINK = matching_pb2.MATCH_REVIEW_OUTCOME_LINK
NEW = matching_pb2.MATCH_REVIEW_OUTCOME_NEW_PERSON


async def match(server: MatchingServer, record: matching_pb2.PersonRecord) -> matching_pb2.MatchResult:
    """MatchRecord and return the result."""
    return (
        await server.stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record, source="pos"))
    ).result


async def a_review(
    server: MatchingServer, *identifiers: common_pb2.Identifier
) -> tuple[matching_pb2.MatchResult, matching_pb2.MatchResult]:
    """A person and a partial record of it that goes to review (the partial one carrying the identifiers)."""
    original = person()
    created = await match(server, original)
    partial = matching_pb2.PersonRecord(
        given_name=original.given_name,
        surname=original.surname,
        postcode=original.postcode,
        identifiers=identifiers,
    )
    review = await match(server, partial)
    assert review.decision == REVIEW and review.candidates[0].person_id == created.person_id
    return created, review


def settle(review: matching_pb2.MatchResult, **fields: Any) -> matching_pb2.SettleMatchReviewRequest:
    """A settlement of the review; fields override the defaults (link to the best candidate)."""
    values: dict[str, Any] = {
        "decision_id": review.decision_id,
        "outcome": LINK,
        "person_id": review.candidates[0].person_id if review.candidates else "",
        "reviewer": "ops@example.com",
        "reason": "same customer, moved house",
        "request_id": f"settle-{uuid.uuid4()}",
    }
    values.update(fields)
    return matching_pb2.SettleMatchReviewRequest(**values)


async def open_reviews(server: MatchingServer) -> set[str]:
    """The ids of every open review, page by page."""
    ids: set[str] = set()
    token = ""
    while True:
        page = await server.stub.ListMatchReviews(
            matching_pb2.ListMatchReviewsRequest(page_size=2, page_token=token)
        )
        ids.update(r.id for r in page.reviews)
        assert all(r.decision == REVIEW and not r.HasField("settlement") for r in page.reviews)
        if not page.next_page_token:
            return ids
        token = page.next_page_token


async def test_settling_a_review_links_the_record(server: MatchingServer) -> None:
    address = common_pb2.Identifier(type="email", value=f"{unique_word()}@example.com")
    created, review = await a_review(server, address)
    assert review.decision_id in await open_reviews(server)
    response = await server.stub.SettleMatchReview(settle(review))
    result = response.result
    assert result.decision == LINKED and result.person_id == created.person_id and result.record_id
    assert result.decision_id != review.decision_id
    settled = response.review
    assert settled.id == review.decision_id and settled.decision == REVIEW
    assert settled.settlement.outcome == LINK
    assert settled.settlement.person_id == created.person_id
    assert settled.settlement.decision_id == result.decision_id
    assert settled.settlement.reviewer == "ops@example.com"
    assert settled.settlement.reason == "same customer, moved house"
    assert settled.settlement.HasField("settle_time")
    assert review.decision_id not in await open_reviews(server)
    # The record's identifier is the person's now, and the lineage shows both decisions.
    holder = await server.identity.LookupPerson(identity_pb2.LookupPersonRequest(identifier=address))
    assert holder.person.id == created.person_id
    listed = await server.stub.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=created.person_id)
    )
    by_id = {d.id: d for d in listed.decisions}
    assert by_id[review.decision_id].settlement.decision_id == result.decision_id
    assert by_id[result.decision_id].settles_decision_id == review.decision_id
    # The same record again now links without a review.
    again = await match(server, by_id[result.decision_id].record)
    assert again.decision == LINKED and again.person_id == created.person_id


async def test_settling_a_review_as_a_new_person_creates_one(server: MatchingServer) -> None:
    created, review = await a_review(server)
    response = await server.stub.SettleMatchReview(settle(review, outcome=NEW, person_id=""))
    result = response.result
    assert result.decision == NEW_PERSON and result.person_id != created.person_id
    got = await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=result.person_id))
    assert got.person.id == result.person_id
    assert response.review.settlement.outcome == NEW
    assert response.review.settlement.person_id == result.person_id


async def test_a_candidate_merged_since_leads_to_its_survivor(server: MatchingServer) -> None:
    created, review = await a_review(server)
    survivor = await match(server, person())
    await server.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            survivor_person_id=survivor.person_id,
            merged_person_id=created.person_id,
            request_id=f"merge-{uuid.uuid4()}",
        )
    )
    response = await server.stub.SettleMatchReview(settle(review))
    assert response.result.person_id == survivor.person_id
    # Filed under the candidate: undoing the merge takes the record back with it.
    await server.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(person_id=created.person_id, request_id=f"unmerge-{uuid.uuid4()}")
    )
    again = await match(
        server,
        (
            await server.stub.ListMatchDecisions(
                matching_pb2.ListMatchDecisionsRequest(person_id=created.person_id)
            )
        )
        .decisions[0]
        .record,
    )
    assert again.person_id == created.person_id


async def test_a_repeat_answers_the_first_answer_and_writes_nothing(server: MatchingServer) -> None:
    _, review = await a_review(server)
    request = settle(review)
    first = await server.stub.SettleMatchReview(request)
    rows = [await count_rows(server, table) for table in (*TABLES, "persons", "outbox")]
    again = await server.stub.SettleMatchReview(request)
    assert again == first
    assert [await count_rows(server, table) for table in (*TABLES, "persons", "outbox")] == rows
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.SettleMatchReview(settle(review, request_id=request.request_id, reason="other"))
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None and details.error_info.reason == "IDEMPOTENCY_KEY_REUSED"


async def refused(
    server: MatchingServer, request: matching_pb2.SettleMatchReviewRequest, code: grpc.StatusCode
) -> tuple[str, set[str]]:
    """Settle, which must fail with the code and write nothing; return the reason and violated fields."""
    tables = (*TABLES, "persons", "identifiers", "idempotency_keys", "outbox")
    before = [await count_rows(server, table) for table in tables]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.SettleMatchReview(request)
    details = status_details(raised.value)
    assert details.code == code, details
    assert [await count_rows(server, table) for table in tables] == before
    assert details.error_info is not None
    return details.error_info.reason, details.fields


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"decision_id": ""}, {"decision_id"}),
        ({"decision_id": "not-a-uuid"}, {"decision_id"}),
        ({"outcome": matching_pb2.MATCH_REVIEW_OUTCOME_UNSPECIFIED}, {"outcome"}),
        ({"outcome": 7}, {"outcome"}),
        ({"person_id": ""}, {"person_id"}),
        ({"person_id": "someone"}, {"person_id"}),
        ({"outcome": NEW}, {"person_id"}),
        ({"reviewer": " "}, {"reviewer"}),
        ({"reviewer": "x" * 257}, {"reviewer"}),
        ({"reason": "x" * 513}, {"reason"}),
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "x" * 129}, {"request_id"}),
        ({"decision_id": "", "reviewer": "", "request_id": ""}, {"decision_id", "reviewer", "request_id"}),
    ],
)
async def test_bad_input_is_refused(
    server: MatchingServer, fields: dict[str, Any], violated: set[str]
) -> None:
    _, review = await a_review(server)
    assert await refused(server, settle(review, **fields), grpc.StatusCode.INVALID_ARGUMENT) == (
        "INVALID_ARGUMENT",
        violated,
    )
    assert review.decision_id in await open_reviews(server)


async def test_a_person_not_of_the_review_is_refused(server: MatchingServer) -> None:
    _, review = await a_review(server)
    stranger = await match(server, person())
    for person_id in (stranger.person_id, str(uuid.uuid4())):
        reason, fields = await refused(
            server, settle(review, person_id=person_id), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (reason, fields) == ("INVALID_ARGUMENT", {"person_id"})


async def test_an_unknown_decision_is_not_found(server: MatchingServer) -> None:
    _, review = await a_review(server)
    reason, _ = await refused(
        server, settle(review, decision_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND
    )
    assert reason == "MATCH_DECISION_NOT_FOUND"


async def test_a_decision_that_is_not_a_review_is_refused(server: MatchingServer) -> None:
    created, _ = await a_review(server)
    request = settle(created, person_id=created.person_id)
    reason, _ = await refused(server, request, grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "NOT_A_REVIEW"


async def test_a_settled_review_cannot_be_settled_again(server: MatchingServer) -> None:
    _, review = await a_review(server)
    await server.stub.SettleMatchReview(settle(review))
    reason, _ = await refused(
        server, settle(review, outcome=NEW, person_id=""), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "REVIEW_ALREADY_SETTLED"


async def test_a_holder_of_the_records_identifier_can_be_chosen(server: MatchingServer) -> None:
    address = common_pb2.Identifier(type="email", value=f"{unique_word()}@example.com")
    holder = (
        await server.identity.ResolvePerson(identity_pb2.ResolvePersonRequest(identifiers=[address]))
    ).resolution.person_id
    created, review = await a_review(server, address)
    assert list(review.identifier_person_ids) == [holder]
    response = await server.stub.SettleMatchReview(settle(review, person_id=holder))
    assert response.result.decision == LINKED and response.result.person_id == holder
    # Choosing the candidate instead would have left the email with its holder: no persons were joined.
    got = await server.identity.GetPerson(identity_pb2.GetPersonRequest(person_id=created.person_id))
    assert not got.person.merged_person_ids and not got.person.identifiers


async def test_list_reviews_refuses_a_bad_page(server: MatchingServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.ListMatchReviews(
            matching_pb2.ListMatchReviewsRequest(page_size=-1, page_token="garbage")
        )
    assert status_details(raised.value).fields == {"page_size", "page_token"}
