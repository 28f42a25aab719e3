"""The MatchingService servicer: validates requests, translates protobuf ⇄ domain, owns the transactions."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
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
from omni_identity.matching.matcher import Repair
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
from omni_identity.operator_repository import OperatorRepository
from omni_identity.operators import Operators
from omni_identity.repository import IdentityRepository
from omni_kit import validation
from omni_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from omni_kit.idempotency import fingerprint
from omni_kit.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TRAINING_RECORDS = 50_000
# Who settles the reviews cluster repair settles (the lineage's reviewer).
REPAIR_REVIEWER = "match repair"
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
        self,
        runtime: Runtime,
        linking: Linking,
        normalise_identifier: IdentifierNormaliser,
        operators: Operators,
    ) -> None:
        self._runtime = runtime
        self._linking = linking
        self._normalise_identifier = normalise_identifier
        self._operators = operators

    async def MatchRecord(
        self, request: matching_pb2.MatchRecordRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.MatchRecordResponse:
        """Decide one record."""
        # Counted before anything reads the identifiers: 4 MB hold half a million.
        validation.check_counts(request.record, prefix="record").raise_if_any()
        violations = validation.check(request)
        record = None
        if request.HasField("record"):
            record = read_record(
                request.record, "record", violations, self._normalise_identifier, today=utc_today()
            )
        violations.raise_if_any()
        assert record is not None
        [decision] = await self._match([record], request.source.strip(), request.request_id.strip())
        return matching_pb2.MatchRecordResponse(result=result_message(decision))

    async def BatchMatchRecords(
        self, request: matching_pb2.BatchMatchRecordsRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.BatchMatchRecordsResponse:
        """Decide many records in order, in one transaction."""
        # Counted before anything reads the records and their identifiers: 4 MB hold two million of either.
        violations = validation.check_counts(request)
        if not violations:
            for i, message in enumerate(request.records):
                validation.check_counts(message, violations, prefix=f"records[{i}]")
        violations.raise_if_any()
        validation.check(request, violations)
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
        validation.validate(request)
        request_id = request.request_id.strip()
        limit = request.max_records or DEFAULT_TRAINING_RECORDS
        # What the call asks for, the default spelt out: the model row keeps it to refuse a reused id.
        digest = fingerprint(
            "TrainMatchModel", matching_pb2.TrainMatchModelRequest(request_id=request_id, max_records=limit)
        )
        # Reading, training and storing are three steps: no transaction stays open while EM runs.
        async with self._runtime.transaction() as session:
            repository = MatchRepository(session)
            earlier = await repository.model_of_request(request_id) if request_id else None
            if earlier is None:
                records, start = await self._linking.training_set(repository, limit)
        if earlier is not None:
            earlier.ensure_asked_by(request_id, digest)
            return matching_pb2.TrainMatchModelResponse(model=model_message(earlier, self._linking.policy))
        try:
            result = await self._linking.train(records, start.model)
        except TrainingError as error:
            raise FailedPrecondition(message=str(error), reason="TOO_FEW_DUPLICATES") from error
        async with self._runtime.transaction() as session:
            stored = await self._linking.put_in_use(
                MatchRepository(session),
                result,
                request_id=request_id or None,
                request_fingerprint=digest if request_id else None,
            )
        log.info(
            "match model version %d in use (%d candidate pairs)", stored.model.version, result.candidate_pairs
        )
        return matching_pb2.TrainMatchModelResponse(model=model_message(stored, self._linking.policy))

    async def ListMatchDecisions(
        self, request: matching_pb2.ListMatchDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> matching_pb2.ListMatchDecisionsResponse:
        """List the decisions about a person, a page at a time."""
        violations = validation.check(request)
        after = identity_messages.page_token(request.page_token, _DECISIONS_PAGE, violations)
        violations.raise_if_any()
        person_id, limit = uuid.UUID(request.person_id), paging.page_size(request.page_size)
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
        violations = validation.check(request)
        outcome = _OUTCOMES.get(request.outcome)
        # Whether a person is named depends on the outcome; whether it is a UUID is the proto's to say.
        if outcome is ReviewOutcome.LINK:
            violations.check(bool(request.person_id), "person_id", "is required when the outcome is LINK")
        elif outcome is ReviewOutcome.NEW_PERSON and request.person_id and not violations.names("person_id"):
            # Said once: a person id that is not a UUID is named by the proto's rule already.
            violations.add("person_id", "must be empty when the outcome is NEW_PERSON")
        violations.raise_if_any()
        assert outcome is not None
        request_id, decision_id = request.request_id, uuid.UUID(request.decision_id)
        person_id = uuid.UUID(request.person_id) if request.person_id else None
        reviewer, reason = request.reviewer.strip(), request.reason.strip()

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
        violations = validation.check(request)
        after = identity_messages.page_token(request.page_token, _REVIEWS_PAGE, violations)
        violations.raise_if_any()
        limit = paging.page_size(request.page_size)
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

        decisions = await retrying(work)
        if self._linking.policy.repair is not Repair.MERGE:
            return decisions
        return [await self._repair(d) if d.proposed_merge and d.open_review else d for d in decisions]

    async def _repair(self, review: DecisionRecord) -> DecisionRecord:
        """Merge the persons a review found to be one into the oldest (the graph's own merge: its checks,
        lineage and event; reason "match repair"), then settle the review by linking its record to the
        survivor. Each step is its own transaction, after the match's: a merge a limit refuses, or a review
        settled meanwhile, leaves the review as it is for an operator."""
        survivor, *others = review.proposed_merge
        reason = f"match repair: match decision {review.id}"
        for merged in others:

            async def merge(session: AsyncSession, merged: uuid.UUID = merged) -> None:
                await self._operators.merge(
                    OperatorRepository(session),
                    IdentityRepository(session),
                    OutboxPublisher(self._runtime.outbox, session),
                    survivor,
                    merged,
                    reason,
                    request_id=f"match-repair:{review.id}",
                )

            try:
                await self._in_transaction(merge)
            except InvalidArgument:
                continue  # merged already (an earlier record of the batch repaired the same split)
            except (FailedPrecondition, NotFound) as refused:
                log.info("match repair of %s left for review: %s", review.id, refused)
                return review

        async def settle(session: AsyncSession) -> DecisionRecord:
            settled = await self._linking.settle(
                MatchRepository(session),
                GraphRepository(session),
                OutboxPublisher(self._runtime.outbox, session),
                review.id,
                ReviewOutcome.LINK,
                survivor,
                reviewer=REPAIR_REVIEWER,
                reason=reason,
            )
            return settled.decision

        try:
            return await self._in_transaction(settle)
        except (FailedPrecondition, NotFound, InvalidArgument) as refused:
            log.info("match repair of %s left for review: %s", review.id, refused)
            return review

    async def _in_transaction(self, step: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def work() -> T:
            async with self._runtime.transaction() as session:
                return await step(session)

        return await retrying(work)
