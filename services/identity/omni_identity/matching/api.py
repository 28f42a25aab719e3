"""The MatchingService servicer: validates requests, translates protobuf ⇄ domain, owns the transactions."""

from __future__ import annotations

import logging
import uuid
from typing import TypeVar

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from omni.identity.v1 import matching_pb2, matching_pb2_grpc
from omni_identity import messages as identity_messages
from omni_identity import paging
from omni_identity.api import retrying, run_once
from omni_identity.events import OutboxPublisher
from omni_identity.matching.graph_repository import GraphRepository
from omni_identity.matching.linking import DecisionRecord, Linking, ReviewOutcome
from omni_identity.matching.messages import (
    IdentifierNormaliser,
    decision_message,
    model_message,
    read_record,
    result_message,
    utc_today,
)
from omni_identity.matching.records import NormalisedRecord
from omni_identity.matching.repository import MatchRepository
from omni_identity.matching.training import TrainingError
from omni_kit.errors import FailedPrecondition, Violations, has_control_characters
from omni_kit.ids import parse_uuid
from omni_kit.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 1000
MAX_REQUEST_ID_LENGTH = 128
DEFAULT_TRAINING_RECORDS = 50_000
MAX_TRAINING_RECORDS = 200_000
# The kinds of ListMatchDecisions and ListMatchReviews page tokens, so that other lists' tokens are refused.
_DECISIONS_PAGE = "identity.match_decisions"
_REVIEWS_PAGE = "identity.match_reviews"
# The kind of SettleMatchReview calls among the operator calls stored by request id.
_SETTLE_KIND = "settle_match_review"
_OUTCOMES = {
    matching_pb2.MATCH_REVIEW_OUTCOME_LINK: ReviewOutcome.LINK,
    matching_pb2.MATCH_REVIEW_OUTCOME_NEW_PERSON: ReviewOutcome.NEW_PERSON,
}


class MatchingServicer(matching_pb2_grpc.MatchingServiceServicer):
    """gRPC face of the probabilistic matcher."""

    def __init__(
        self, runtime: Runtime, linking: Linking, normalise_identifier: IdentifierNormaliser
    ) -> None:
        self._runtime = runtime
        self._linking = linking
        self._normalise_identifier = normalise_identifier

    async def MatchRecord(
        self, request: matching_pb2.MatchRecordRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.MatchRecordResponse:
        """Decide one record."""
        violations = Violations()
        record = None
        if violations.check(request.HasField("record"), "record", "is required"):
            record = read_record(
                request.record, "record", violations, self._normalise_identifier, today=utc_today()
            )
        _check_request(request.source, request.request_id, violations)
        violations.raise_if_any()
        assert record is not None
        [decision] = await self._match([record], request.source.strip(), request.request_id.strip())
        return matching_pb2.MatchRecordResponse(result=result_message(decision))

    async def BatchMatchRecords(
        self, request: matching_pb2.BatchMatchRecordsRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.BatchMatchRecordsResponse:
        """Decide many records in order, in one transaction."""
        violations = Violations()
        violations.check(len(request.records) > 0, "records", "at least one record is required")
        violations.check(
            len(request.records) <= MAX_BATCH, "records", f"at most {MAX_BATCH} records per batch"
        )
        _check_request(request.source, request.request_id, violations)
        violations.raise_if_any()
        today = utc_today()
        records = [
            read_record(message, f"records[{i}]", violations, self._normalise_identifier, today=today)
            for i, message in enumerate(request.records)
        ]
        violations.raise_if_any()
        decisions = await self._match(
            [r for r in records if r is not None], request.source.strip(), request.request_id.strip()
        )
        return matching_pb2.BatchMatchRecordsResponse(results=[result_message(d) for d in decisions])

    async def GetMatchModel(
        self, request: matching_pb2.GetMatchModelRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.GetMatchModelResponse:
        """Show the model in use and its thresholds."""
        async with self._runtime.transaction() as session:
            stored = await self._linking.model_in_use(MatchRepository(session))
        return matching_pb2.GetMatchModelResponse(model=model_message(stored, self._linking.policy))

    async def TrainMatchModel(
        self, request: matching_pb2.TrainMatchModelRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.TrainMatchModelResponse:
        """Train a new model version on the stored records and put it in use."""
        violations = Violations()
        request_id = request.request_id.strip()
        violations.check(
            len(request_id) <= MAX_REQUEST_ID_LENGTH,
            "request_id",
            f"is longer than {MAX_REQUEST_ID_LENGTH} characters",
        )
        violations.check(not has_control_characters(request_id), "request_id", "holds control characters")
        violations.check(
            0 <= request.max_records <= MAX_TRAINING_RECORDS,
            "max_records",
            f"must lie between 0 (the default, {DEFAULT_TRAINING_RECORDS:,}) and {MAX_TRAINING_RECORDS:,}",
        )
        violations.raise_if_any()
        # Reading, training and storing are three steps: no transaction stays open while EM runs.
        async with self._runtime.transaction() as session:
            repository = MatchRepository(session)
            earlier = await repository.model_of_request(request_id) if request_id else None
            if earlier is None:
                records, start = await self._linking.training_set(
                    repository, request.max_records or DEFAULT_TRAINING_RECORDS
                )
        if earlier is not None:
            return matching_pb2.TrainMatchModelResponse(model=model_message(earlier, self._linking.policy))
        try:
            result = await self._linking.train(records, start.model)
        except TrainingError as error:
            raise FailedPrecondition(message=str(error), reason="TOO_FEW_DUPLICATES") from error
        async with self._runtime.transaction() as session:
            stored = await self._linking.put_in_use(
                MatchRepository(session), result, request_id=request_id or None
            )
        log.info(
            "match model version %d in use (%d candidate pairs)", stored.model.version, result.candidate_pairs
        )
        return matching_pb2.TrainMatchModelResponse(model=model_message(stored, self._linking.policy))

    async def ListMatchDecisions(
        self, request: matching_pb2.ListMatchDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.ListMatchDecisionsResponse:
        """List the decisions about a person, a page at a time."""
        violations = Violations()
        person_id = None
        if violations.check(bool(request.person_id.strip()), "person_id", "is required"):
            person_id = parse_uuid(request.person_id.strip())
            violations.check(person_id is not None, "person_id", "is not a person id (a UUID)")
        limit = after = None
        try:
            limit = paging.page_size(request.page_size)
        except ValueError as error:
            violations.add("page_size", str(error))
        try:
            after = paging.decode_token(request.page_token, _DECISIONS_PAGE)
        except ValueError as error:
            violations.add("page_token", str(error))
        violations.raise_if_any()
        assert person_id is not None and limit is not None
        async with self._runtime.transaction() as session:
            # The person an id leads to and every person merged into it: their records are its records now.
            persons = await GraphRepository(session).tree(person_id) or [person_id]
            decisions = await MatchRepository(session).decisions_about(persons, after=after, limit=limit + 1)
        response = matching_pb2.ListMatchDecisionsResponse(
            decisions=[decision_message(d) for d in decisions[:limit]]
        )
        if len(decisions) > limit:
            response.next_page_token = paging.encode_token(decisions[limit - 1].id, _DECISIONS_PAGE)
        return response

    async def SettleMatchReview(
        self, request: matching_pb2.SettleMatchReviewRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.SettleMatchReviewResponse:
        """File a review's record as an operator decided, once per request id."""
        violations = Violations()
        request_id = identity_messages.request_id(request.request_id, violations)
        decision_id = None
        if violations.check(bool(request.decision_id.strip()), "decision_id", "is required"):
            decision_id = parse_uuid(request.decision_id.strip())
            violations.check(decision_id is not None, "decision_id", "is not a decision id (a UUID)")
        outcome = _OUTCOMES.get(request.outcome)
        violations.check(outcome is not None, "outcome", "must be LINK or NEW_PERSON")
        person_id = None
        if outcome is ReviewOutcome.LINK:
            person_id = identity_messages.person_id(request.person_id, "person_id", violations)
        elif outcome is ReviewOutcome.NEW_PERSON:
            violations.check(
                not request.person_id, "person_id", "must be empty when the outcome is NEW_PERSON"
            )
        reviewer = identity_messages.text(
            request.reviewer, "reviewer", identity_messages.MAX_REQUESTED_BY_LENGTH, violations, required=True
        )
        reason = identity_messages.text(
            request.reason, "reason", identity_messages.MAX_REASON_LENGTH, violations
        )
        violations.raise_if_any()
        assert decision_id is not None and outcome is not None

        async def work(
            session: AsyncSession,
        ) -> tuple[matching_pb2.SettleMatchReviewResponse, list[uuid.UUID]]:
            settled = await self._linking.settle(
                MatchRepository(session),
                GraphRepository(session),
                OutboxPublisher(self._runtime.outbox, session),
                decision_id,
                outcome,
                person_id,
                reviewer=reviewer,
                reason=reason,
            )
            review = settled.review
            response = matching_pb2.SettleMatchReviewResponse(
                result=result_message(settled.decision), review=decision_message(review)
            )
            # The answer shows the record's persons: erasing any of them removes it.
            shown = {settled.decision.person_id, *(c.person_id for c in review.candidates), *review.holders}
            return response, sorted(p for p in shown if p is not None)

        return await run_once(
            self._runtime, _SETTLE_KIND, request_id, request, matching_pb2.SettleMatchReviewResponse, work
        )

    async def ListMatchReviews(
        self, request: matching_pb2.ListMatchReviewsRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.ListMatchReviewsResponse:
        """List the reviews nobody has settled yet, a page at a time."""
        violations = Violations()
        limit, after = identity_messages.page(
            request.page_size, request.page_token, _REVIEWS_PAGE, violations
        )
        violations.raise_if_any()
        async with self._runtime.transaction() as session:
            reviews = await MatchRepository(session).open_reviews(after=after, limit=limit + 1)
        response = matching_pb2.ListMatchReviewsResponse(
            reviews=[decision_message(r) for r in reviews[:limit]]
        )
        if len(reviews) > limit:
            response.next_page_token = paging.encode_token(reviews[limit - 1].id, _REVIEWS_PAGE)
        return response

    async def _match(
        self, records: list[NormalisedRecord], source: str, request_id: str
    ) -> list[DecisionRecord]:
        async def work() -> list[DecisionRecord]:
            async with self._runtime.transaction() as session:
                return await self._linking.match(
                    MatchRepository(session),
                    GraphRepository(session),
                    OutboxPublisher(self._runtime.outbox, session),
                    records,
                    source=source,
                    request_id=request_id or None,
                )

        return await retrying(work)


def _check_request(source: str, request_id: str, violations: Violations) -> None:
    identity_messages.source(source, "source", identity_messages.MAX_SOURCE_LENGTH, violations)
    violations.check(
        len(request_id) <= MAX_REQUEST_ID_LENGTH,
        "request_id",
        f"is longer than {MAX_REQUEST_ID_LENGTH} characters",
    )
    violations.check(not has_control_characters(request_id), "request_id", "holds control characters")
