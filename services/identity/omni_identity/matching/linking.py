"""The matcher's use cases, each inside the caller's transaction: decide records against the store and keep
the decisions as lineage, show the model in use, and put a newly trained model in use.

Concurrency: a batch first takes a transaction-scoped lock on every blocking key of its records (in sorted
order, in one statement), then reads the candidates. Two records that could be candidates of each other
share a key, so concurrent requests about the same person queue up and the second sees the first's record
instead of creating the person twice. Requests about unrelated records do not wait for each other.
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
from typing import Protocol

from omni_identity.matching.blocking import blocking_keys
from omni_identity.matching.matcher import Candidate, Decision, Outcome, Policy, StoredRecord, decide_batch
from omni_identity.matching.model import MatchModel, default_model
from omni_identity.matching.records import NormalisedRecord
from omni_identity.matching.training import TrainingResult, train
from omni_kit.errors import AlreadyExists


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


@dataclass(frozen=True)
class StoredModel:
    """A model version with when it was trained (None for the built-in one)."""

    model: MatchModel
    created_at: datetime | None
    request_id: str | None = None


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
        self, model: MatchModel, *, converged: bool, request_id: str | None, now: datetime
    ) -> None:
        """Store a new model version."""

    async def training_records(self, limit: int) -> list[StoredRecord]:
        """Up to limit stored records, newest first."""


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
        self, policy: Policy, *, clock: Callable[[], datetime], new_id: Callable[[], uuid.UUID]
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._new_id = new_id

    async def model_in_use(self, store: MatchStore) -> StoredModel:
        """The newest trained model, or the built-in one before any training."""
        stored = await store.current_model()
        return stored if stored is not None else StoredModel(default_model(), None)

    async def match(
        self,
        store: MatchStore,
        records: Sequence[NormalisedRecord],
        *,
        source: str,
        request_id: str | None,
    ) -> list[DecisionRecord]:
        """Decide the records in order, file the linked and new ones, and record every decision.

        A repeated request id returns the decisions made the first time (AlreadyExists if its content
        differs).
        """
        digest = fingerprint(records, source)
        if request_id:
            earlier = await store.decisions_of_request(request_id)
            if earlier:
                if earlier[0].fingerprint != digest:
                    raise AlreadyExists(
                        message=f"request id {request_id!r} was used for other records",
                        reason="REQUEST_ID_REUSED",
                    )
                return earlier
        keys = sorted({key for record in records for key in blocking_keys(record)})
        await store.lock_keys(keys)
        existing = await store.records_sharing_keys(keys, max_block=self.policy.max_block)
        model = (await self.model_in_use(store)).model
        outcomes = await self._decide(records, existing, model)
        now = self._clock()
        await store.add_records([o.stored for o in outcomes if o.stored is not None], source=source, now=now)
        decisions = [
            self._decision(outcome, position, model, source, request_id, digest, now)
            for position, outcome in enumerate(outcomes)
        ]
        await store.add_decisions(decisions)
        return decisions

    async def _decide(
        self, records: Sequence[NormalisedRecord], existing: Sequence[StoredRecord], model: MatchModel
    ) -> list[Outcome]:
        # Comparing a large batch takes long enough to stall other calls: do it off the event loop.
        return await asyncio.to_thread(
            decide_batch, records, existing, model, self.policy, new_id=self._new_id
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
        self, store: MatchStore, result: TrainingResult, *, request_id: str | None
    ) -> StoredModel:
        """Store the trained model as the next version, which the following decisions use.

        A request id already used returns the version it put in use and stores nothing.
        """
        await store.lock_models()
        if request_id:
            earlier = await store.model_of_request(request_id)
            if earlier is not None:
                return earlier
        current = await store.current_model()
        version = (current.model.version if current is not None else 0) + 1
        model = dataclasses.replace(result.model, version=version)
        now = self._clock()
        await store.add_model(model, converged=result.converged, request_id=request_id, now=now)
        return StoredModel(model, now, request_id)
