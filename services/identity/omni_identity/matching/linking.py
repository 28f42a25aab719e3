"""The matcher's use cases, each inside the caller's transaction: decide records against the store, file
them in the identity graph and keep the decisions as lineage, settle reviews, show the model in use, and put
a newly trained model in use.

Concurrency: a batch first takes a transaction-scoped lock on every blocking key of its records (in sorted
order, in one statement), then reads the candidates. Two records that could be candidates of each other
share a key, so concurrent requests about the same person queue up and the second sees the first's record
instead of creating the person twice. Requests about unrelated records do not wait for each other. Then
come the graph's locks (graph.py): the records' identifiers, then the rows of the persons filed under; a
person merged or forgotten since the records were read makes the caller run the transaction again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from omni_identity.matching.blocking import blocking_keys
from omni_identity.matching.graph import (
    Filing,
    GraphFiling,
    GraphStore,
    GraphView,
    identifier_key,
    identifier_string,
)
from omni_identity.matching.matcher import Candidate, Decision, Outcome, Policy, StoredRecord, decide_batch
from omni_identity.matching.model import MatchModel, default_model
from omni_identity.matching.records import NormalisedRecord
from omni_identity.matching.training import TrainingResult, train
from omni_identity.persons import EventSink
from omni_kit.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from omni_kit.idempotency import ensure_same_request


class ReviewOutcome(Enum):
    """What an operator decided about a record sent to review."""

    LINK = "link"
    """The record is a person's: one of the review's candidates, or a holder of its identifiers."""
    NEW_PERSON = "new_person"
    """The record is nobody known: a new person is created for it."""


@dataclass(frozen=True)
class Settlement:
    """How a review was settled: by whom, when, why, and the decision that filed its record."""

    outcome: ReviewOutcome
    person_id: uuid.UUID
    decision_id: uuid.UUID
    reviewer: str
    reason: str
    settled_at: datetime


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as the lineage keeps it."""

    id: uuid.UUID
    decision: Decision
    person_id: uuid.UUID | None
    record_id: uuid.UUID | None
    probability: float
    candidates: tuple[Candidate, ...]
    model_version: int
    link_threshold: float
    review_threshold: float
    source: str
    request_id: str | None
    position: int
    fingerprint: str
    record: NormalisedRecord
    decided_at: datetime
    holders: tuple[uuid.UUID, ...] = ()
    """The persons of the graph holding the record's identifiers when it was decided."""
    settles: uuid.UUID | None = None
    """For a decision made by settling a review: the review."""
    proposed_merge: tuple[uuid.UUID, ...] = ()
    """Cluster repair: persons the record matched that match each other (one person split), to merge."""
    settlement: Settlement | None = None
    """For a settled review: how it was settled."""

    @property
    def open_review(self) -> bool:
        """True for a review nobody has settled yet."""
        return self.decision is Decision.REVIEW and self.settlement is None


@dataclass(frozen=True)
class Settled:
    """The outcome of settling a review: the decision that filed the record, and the review as now settled."""

    decision: DecisionRecord
    review: DecisionRecord


@dataclass(frozen=True)
class StoredModel:
    """A model version with when it was trained (None for the built-in one)."""

    model: MatchModel
    created_at: datetime | None
    request_id: str | None = None
    request_fingerprint: bytes | None = None
    """What the training call asked for (omni_kit.idempotency.fingerprint); None before it was kept."""

    def ensure_asked_by(self, request_id: str, digest: bytes) -> None:
        """Refuse a training call that reuses this version's request id with other content."""
        if self.request_fingerprint is not None:
            ensure_same_request(request_id, self.request_fingerprint, digest, used_for="another training")


class MatchStore(Protocol):
    """What the use cases need from storage, bound to one transaction."""

    async def lock_keys(self, keys: Sequence[str]) -> None:
        """Hold a lock on each blocking key until the transaction ends."""

    async def records_sharing_keys(self, keys: Sequence[str], *, max_block: int) -> list[StoredRecord]:
        """The stored records filed under any of the keys whose block holds at most max_block records."""

    async def add_records(self, records: Sequence[StoredRecord], *, source: str, now: datetime) -> None:
        """File new records under their persons."""

    async def add_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Append decisions to the lineage."""

    async def decisions_of_request(self, request_id: str) -> list[DecisionRecord]:
        """The decisions an earlier call with this request id made, in request order."""

    async def current_model(self) -> StoredModel | None:
        """The highest model version, if any was trained."""

    async def lock_models(self) -> None:
        """Hold the lock that orders the putting in use of new model versions until the transaction ends."""

    async def model_of_request(self, request_id: str) -> StoredModel | None:
        """The model version an earlier training call with this request id put in use."""

    async def add_model(
        self,
        model: MatchModel,
        *,
        converged: bool,
        request_id: str | None,
        now: datetime,
        request_fingerprint: bytes | None = None,
    ) -> None:
        """Store a new model version."""

    async def training_records(self, limit: int) -> list[StoredRecord]:
        """Up to limit stored records, newest first."""

    async def decision(self, decision_id: uuid.UUID, *, lock: bool = False) -> DecisionRecord | None:
        """A decision of the lineage by id (row-locked until the transaction ends with lock)."""

    async def settle(self, review_id: uuid.UUID, settlement: Settlement) -> None:
        """Record a review's settlement."""


def fingerprint(records: Sequence[NormalisedRecord], source: str) -> str:
    """A digest of a request's content, to tell a retry from a different request reusing its id."""
    content = [source, *[_record_json(r) for r in records]]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _record_json(record: NormalisedRecord) -> dict[str, object]:
    return {
        "given_name": record.given_name,
        "surname": record.surname,
        "date_of_birth": record.date_of_birth,
        "street_number": record.street_number,
        "address_1": record.address_1,
        "address_2": record.address_2,
        "suburb": record.suburb,
        "postcode": record.postcode,
        "state": record.state,
        "identifiers": sorted(record.identifiers),
    }


class Linking:
    """Decides records against the store and keeps the lineage."""

    def __init__(
        self,
        policy: Policy,
        graph: GraphFiling,
        *,
        clock: Callable[[], datetime],
        new_id: Callable[[], uuid.UUID],
    ) -> None:
        self.policy = policy
        self._graph = graph
        self._clock = clock
        self._new_id = new_id

    async def model_in_use(self, store: MatchStore) -> StoredModel:
        """The newest trained model, or the built-in one before any training."""
        stored = await store.current_model()
        return stored if stored is not None else StoredModel(default_model(), None)

    async def match(
        self,
        store: MatchStore,
        graph: GraphStore,
        events: EventSink,
        records: Sequence[NormalisedRecord],
        *,
        source: str,
        request_id: str | None,
    ) -> list[DecisionRecord]:
        """Decide the records in order, file the linked and new ones (in the graph too: persons created,
        identifiers attached), and record every decision.

        A repeated request id returns the decisions made the first time (AlreadyExists if its content
        differs). Raises ConcurrentMerge when a person involved was merged or forgotten meanwhile.
        """
        digest = fingerprint(records, source)
        if request_id:
            earlier = await store.decisions_of_request(request_id)
            if earlier:
                ensure_same_request(request_id, earlier[0].fingerprint, digest, used_for="other records")
                return earlier
        keys = sorted({key for record in records for key in blocking_keys(record)})
        await store.lock_keys(keys)
        view = await self._graph.read(graph, (i for record in records for i in record.identifiers))
        if view.ignored:
            # Identifiers of forgotten persons are neither matched on nor filed again (tombstone policy drop).
            records = [_without(record, view) for record in records]
        existing = await store.records_sharing_keys(keys, max_block=self.policy.max_block)
        model = (await self.model_in_use(store)).model
        outcomes = await self._decide(records, existing, model, view)
        created = {o.person_id for o in outcomes if o.decision is Decision.NEW_PERSON}
        linked = {o.person_id for o in outcomes if o.decision is Decision.LINKED} - created
        await self._graph.confirm(graph, view, (p for p in linked if p is not None))
        now = self._clock()
        filings = [_filing(o, source) for o in outcomes if o.person_id is not None]
        await self._graph.write(graph, events, await self._graph.plan(graph, view, filings, now))
        await store.add_records([o.stored for o in outcomes if o.stored is not None], source=source, now=now)
        decisions = [
            self._decision(outcome, position, model, source, request_id, digest, now)
            for position, outcome in enumerate(outcomes)
        ]
        await store.add_decisions(decisions)
        return decisions

    async def settle(
        self,
        store: MatchStore,
        graph: GraphStore,
        events: EventSink,
        decision_id: uuid.UUID,
        outcome: ReviewOutcome,
        person_id: uuid.UUID | None,
        *,
        reviewer: str,
        reason: str,
    ) -> Settled:
        """File a review's record as the operator decided: under a person of the review (a candidate or a
        holder of its identifiers; a merged one leads to its survivor) or a new person, as a LINKED or
        NEW_PERSON decision would, and record the settlement on the review.

        NotFound for an unknown decision; FailedPrecondition when it is not a review, is settled already,
        or the person was forgotten; InvalidArgument when the person is not one of the review's.
        """
        review = _settleable(await store.decision(decision_id), decision_id)
        target: uuid.UUID
        if outcome is ReviewOutcome.LINK:
            assert person_id is not None
            target = await self._review_person(graph, review, person_id)
            filed_under = person_id
        else:
            target = filed_under = self._new_id()
        record = review.record
        await store.lock_keys(sorted(blocking_keys(record)))
        view = await self._graph.read(graph, record.identifiers)
        if view.ignored:
            record = _without(record, view)
        created = outcome is ReviewOutcome.NEW_PERSON
        await self._graph.confirm(graph, view, [] if created else [target])
        # Locked after the persons, as erasure locks persons before it deletes their decisions.
        review = _settleable(await store.decision(decision_id, lock=True), decision_id)
        now = self._clock()
        stored = StoredRecord(self._new_id(), target, record, tuple(blocking_keys(record)), filed_under)
        filing = Filing(
            target,
            filed_under,
            created,
            tuple(identifier_key(i) for i in sorted(record.identifiers)),
            review.source,
        )
        await self._graph.write(graph, events, await self._graph.plan(graph, view, [filing], now))
        await store.add_records([stored], source=review.source, now=now)
        decision = dataclasses.replace(
            review,
            id=self._new_id(),
            decision=Decision.NEW_PERSON if created else Decision.LINKED,
            person_id=target,
            record_id=stored.id,
            request_id=None,
            position=0,
            record=record,
            decided_at=now,
            holders=tuple(
                sorted(
                    {view.holders[k] for k in map(identifier_key, record.identifiers) if k in view.holders}
                )
            ),
            settles=review.id,
            settlement=None,
        )
        await store.add_decisions([decision])
        settlement = Settlement(outcome, target, decision.id, reviewer, reason, now)
        await store.settle(review.id, settlement)
        return Settled(decision, dataclasses.replace(review, settlement=settlement))

    async def _review_person(
        self, graph: GraphStore, review: DecisionRecord, person_id: uuid.UUID
    ) -> uuid.UUID:
        """The live person a person id of the review leads to."""
        person = await self._graph.live_person(graph, person_id)
        named = {c.person_id for c in review.candidates} | set(review.holders)
        allowed = {p.id for p in [await self._graph.live_person(graph, n) for n in named] if p is not None}
        if person is None or (person_id not in named and person.id not in allowed):
            raise InvalidArgument(
                message=f"person {person_id} is not a candidate of review {review.id}",
                violations=[
                    FieldViolation(
                        "person_id", "is not one of the review's candidates or holders of its identifiers"
                    )
                ],
            )
        if person.forgotten:
            raise FailedPrecondition(message=f"person {person_id} was forgotten", reason="PERSON_FORGOTTEN")
        return person.id

    async def _decide(
        self,
        records: Sequence[NormalisedRecord],
        existing: Sequence[StoredRecord],
        model: MatchModel,
        view: GraphView,
    ) -> list[Outcome]:
        holders = {identifier_string(key): person_id for key, person_id in view.holders.items()}
        # Comparing a large batch takes long enough to stall other calls: do it off the event loop.
        return await asyncio.to_thread(
            decide_batch, records, existing, model, self.policy, new_id=self._new_id, holders=holders
        )

    def _decision(
        self,
        outcome: Outcome,
        position: int,
        model: MatchModel,
        source: str,
        request_id: str | None,
        digest: str,
        now: datetime,
    ) -> DecisionRecord:
        return DecisionRecord(
            id=self._new_id(),
            decision=outcome.decision,
            person_id=outcome.person_id,
            record_id=outcome.record_id,
            probability=outcome.probability,
            candidates=outcome.candidates,
            model_version=model.version,
            link_threshold=self.policy.link_threshold,
            review_threshold=self.policy.review_threshold,
            source=source,
            request_id=request_id,
            position=position,
            fingerprint=digest,
            record=outcome.record,
            decided_at=now,
            holders=outcome.holders,
            proposed_merge=outcome.proposed_merge,
        )

    async def training_set(self, store: MatchStore, limit: int) -> tuple[list[StoredRecord], StoredModel]:
        """The records to train on (newest first) and the model training starts from."""
        return await store.training_records(limit), await self.model_in_use(store)

    async def train(self, records: Sequence[StoredRecord], start: MatchModel) -> TrainingResult:
        """Train a model on the candidate pairs among the records, off the event loop (TrainingError if the
        records cannot give a believable model)."""
        return await asyncio.to_thread(
            train,
            [r.record for r in records],
            [r.keys for r in records],
            start,
            version=start.version + 1,
            max_block=self.policy.max_block,
        )

    async def put_in_use(
        self,
        store: MatchStore,
        result: TrainingResult,
        *,
        request_id: str | None,
        request_fingerprint: bytes | None = None,
    ) -> StoredModel:
        """Store the trained model as the next version, which the following decisions use.

        A request id already used returns the version it put in use and stores nothing (AlreadyExists when
        that call asked for something else).
        """
        await store.lock_models()
        if request_id:
            earlier = await store.model_of_request(request_id)
            if earlier is not None:
                if request_fingerprint is not None:
                    earlier.ensure_asked_by(request_id, request_fingerprint)
                return earlier
        current = await store.current_model()
        version = (current.model.version if current is not None else 0) + 1
        model = dataclasses.replace(result.model, version=version)
        now = self._clock()
        await store.add_model(
            model,
            converged=result.converged,
            request_id=request_id,
            now=now,
            request_fingerprint=request_fingerprint,
        )
        return StoredModel(model, now, request_id, request_fingerprint)


def _settleable(review: DecisionRecord | None, decision_id: uuid.UUID) -> DecisionRecord:
    """The decision, if it is a review nobody has settled; the refusal otherwise."""
    if review is None:
        raise NotFound(
            message=f"match decision {decision_id} not found",
            reason="MATCH_DECISION_NOT_FOUND",
            metadata={"decision_id": str(decision_id)},
        )
    if review.decision is not Decision.REVIEW:
        raise FailedPrecondition(
            message=f"match decision {decision_id} is {review.decision.value}, not a review",
            reason="NOT_A_REVIEW",
        )
    if review.settlement is not None:
        raise FailedPrecondition(
            message=f"review {decision_id} was settled already by {review.settlement.reviewer!r}",
            reason="REVIEW_ALREADY_SETTLED",
            metadata={"decision_id": str(review.settlement.decision_id)},
        )
    return review


def _without(record: NormalisedRecord, view: GraphView) -> NormalisedRecord:
    """The record without the identifiers the graph says to ignore."""
    kept = frozenset(i for i in record.identifiers if identifier_key(i) not in view.ignored)
    return record if kept == record.identifiers else dataclasses.replace(record, identifiers=kept)


def _filing(outcome: Outcome, source: str) -> Filing:
    """What filing a decided record changes in the graph."""
    assert outcome.person_id is not None
    return Filing(
        person_id=outcome.person_id,
        filed_under=outcome.stored.origin if outcome.stored is not None else outcome.person_id,
        created=outcome.decision is Decision.NEW_PERSON,
        identifiers=tuple(identifier_key(i) for i in sorted(outcome.record.identifiers)),
        source=source,
    )
