"""The MatchingService servicer: validates requests, translates protobuf ⇄ domain, owns the transactions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from sqlalchemy.exc import DBAPIError

from omni.identity.v1 import matching_pb2, matching_pb2_grpc
from omni_identity import paging
from omni_identity.matching.linking import DecisionRecord, Linking
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
from omni_kit.errors import FailedPrecondition, Unavailable, Violations
from omni_kit.ids import parse_uuid
from omni_kit.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH = 1000
MAX_SOURCE_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 128
DEFAULT_TRAINING_RECORDS = 50_000
MAX_TRAINING_RECORDS = 200_000
# Deadlock, serialisation failure, unique violation (two calls with one request id): the transaction is
# safe to run again, and a repeated request id is then answered from the lineage.
_RETRYABLE_SQLSTATES = {"40P01", "40001", "23505"}
_ATTEMPTS = 3
# The kind of ListMatchDecisions page tokens, so that other lists' tokens are refused.
_DECISIONS_PAGE = "identity.match_decisions"


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
            decisions = await MatchRepository(session).decisions_about(
                person_id, after=after, limit=limit + 1
            )
        response = matching_pb2.ListMatchDecisionsResponse(
            decisions=[decision_message(d) for d in decisions[:limit]]
        )
        if len(decisions) > limit:
            response.next_page_token = paging.encode_token(decisions[limit - 1].id, _DECISIONS_PAGE)
        return response

    async def _match(
        self, records: list[NormalisedRecord], source: str, request_id: str
    ) -> list[DecisionRecord]:
        async def work() -> list[DecisionRecord]:
            async with self._runtime.transaction() as session:
                return await self._linking.match(
                    MatchRepository(session), records, source=source, request_id=request_id or None
                )

        return await _retrying(work)


def _check_request(source: str, request_id: str, violations: Violations) -> None:
    violations.check(
        len(source) <= MAX_SOURCE_LENGTH, "source", f"is longer than {MAX_SOURCE_LENGTH} characters"
    )
    violations.check(
        len(request_id) <= MAX_REQUEST_ID_LENGTH,
        "request_id",
        f"is longer than {MAX_REQUEST_ID_LENGTH} characters",
    )


async def _retrying(work: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when the database aborted it for a reason a new run resolves."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await work()
        except DBAPIError as error:
            sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
            if sqlstate not in _RETRYABLE_SQLSTATES:
                raise
            log.warning("match aborted (SQLSTATE %s), attempt %d of %d", sqlstate, attempt, _ATTEMPTS)
            if attempt == _ATTEMPTS:
                raise Unavailable(message="the matcher is busy; try again") from error
            await asyncio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")
