"""Identity review: the records the matcher could not decide, each beside its candidates' records with the
field-by-field comparison weights, settled as the same person or a new one; and undoing a merge."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import grpc

from omni.identity.v1 import identity_pb2, matching_pb2
from omni_console.calls import Part, describe, fetch
from omni_console.clients import Clients

READ = "identity.matching:read"
REVIEW = "identity.matching:review"
MERGE = "identity.persons:merge"

RECORD_FIELDS = (
    "given_name",
    "surname",
    "date_of_birth",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
)


def record_value(record: matching_pb2.PersonRecord | None, name: str) -> str:
    """One field of a record as text ("" when missing)."""
    if record is None:
        return ""
    if name == "date_of_birth":
        if not record.HasField("date_of_birth"):
            return ""
        date = record.date_of_birth
        return f"{date.year:04d}-{date.month:02d}-{date.day:02d}"
    return str(getattr(record, name))


@dataclass(frozen=True)
class Candidate:
    """A candidate of a review with the stored record it was compared with."""

    candidate: matching_pb2.MatchCandidate
    record: matching_pb2.PersonRecord | None

    def comparison(self, name: str) -> matching_pb2.MatchFieldComparison | None:
        """How the field compared, None when it was not compared (missing on a side)."""
        return next((c for c in self.candidate.comparisons if c.field == name), None)


@dataclass(frozen=True)
class Review:
    """An open review: the record, its candidates side by side, and a request id for settling it once."""

    review: matching_pb2.MatchDecisionRecord
    candidates: list[Candidate]
    request_id: str


async def stored_record(clients: Clients, person_id: str, record_id: str) -> matching_pb2.PersonRecord | None:
    """The record a candidate matched with: the one its decisions filed under record_id."""
    request = matching_pb2.ListMatchDecisionsRequest(person_id=person_id, page_size=1000)
    try:
        response = await clients.matching.ListMatchDecisions(request)
    except grpc.aio.AioRpcError:
        return None
    for decision in response.decisions:
        if decision.record_id == record_id:
            return decision.record
    return None


async def queue(clients: Clients, page_size: int = 20) -> Part[list[Review]]:
    """The open reviews, oldest first, each with its candidates' records."""
    response = await fetch(
        clients,
        READ,
        lambda: clients.matching.ListMatchReviews(matching_pb2.ListMatchReviewsRequest(page_size=page_size)),
    )
    if response.value is None:
        return Part(problem=response.problem, denied=response.denied)
    reviews = list(response.value.reviews)

    async def with_candidates(review: matching_pb2.MatchDecisionRecord) -> Review:
        records = await asyncio.gather(
            *(stored_record(clients, c.person_id, c.record_id) for c in review.candidates)
        )
        return Review(
            review,
            [Candidate(c, r) for c, r in zip(review.candidates, records, strict=True)],
            request_id=f"console-{uuid.uuid4()}",
        )

    return Part(list(await asyncio.gather(*(with_candidates(r) for r in reviews))))


async def settle(
    clients: Clients,
    decision_id: str,
    outcome: str,
    person_id: str,
    reviewer: str,
    reason: str,
    request_id: str,
) -> Part[matching_pb2.SettleMatchReviewResponse]:
    """Settle a review: the record is ``person_id`` (outcome "link") or a new person ("new")."""
    value = (
        matching_pb2.MATCH_REVIEW_OUTCOME_LINK
        if outcome == "link"
        else matching_pb2.MATCH_REVIEW_OUTCOME_NEW_PERSON
    )
    request = matching_pb2.SettleMatchReviewRequest(
        decision_id=decision_id,
        outcome=value,
        person_id=person_id if outcome == "link" else "",
        reviewer=reviewer,
        reason=reason,
        request_id=request_id,
    )
    return await fetch(clients, REVIEW, lambda: clients.matching.SettleMatchReview(request))


async def unmerge(
    clients: Clients, merged_person_id: str, reason: str, request_id: str
) -> Part[identity_pb2.UnmergePersonResponse]:
    """Split a merged person back out of the person it was merged into."""
    request = identity_pb2.UnmergePersonRequest(
        person_id=merged_person_id, reason=reason, request_id=request_id
    )
    return await fetch(clients, MERGE, lambda: clients.identity.UnmergePerson(request))


__all__ = ["RECORD_FIELDS", "Candidate", "Review", "describe", "queue", "record_value", "settle", "unmerge"]
