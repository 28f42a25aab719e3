"""All SQL of the matcher: blocking-key locks, candidate reads, filing records, model versions, lineage."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.matching.comparison import FIELD_INDEX
from omni_identity.matching.linking import DecisionRecord, ReviewOutcome, Settlement, StoredModel
from omni_identity.matching.matcher import Candidate, Decision, FieldComparison, StoredRecord
from omni_identity.matching.model import MatchModel
from omni_identity.matching.models import MatchDecisionRow, MatchModelRow, PersonRecordRow
from omni_identity.matching.records import TEXT_FIELDS, NormalisedRecord

_RECORD_FIELDS = (*TEXT_FIELDS, "date_of_birth")
# Any fixed key works, as long as it is not an identifier's: those are hashed into the same key space.
_MODELS_LOCK_KEY = 7_310_611_100

_LOCK_KEYS = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")

_RECORD_COLUMNS = (
    "r.id, r.person_id, "
    + ", ".join(f"r.{f}" for f in _RECORD_FIELDS)
    + ", r.identifiers, r.blocking_keys, r.filed_under"
)

# A key whose block is larger than max_block is skipped; counting stops at max_block + 1 index entries, so
# a huge block costs no more than a small one.
_SHARING_KEYS = sa.text(
    "WITH usable AS ("
    " SELECT k.key FROM unnest(CAST(:keys AS text[])) AS k(key)"
    " WHERE (SELECT count(*) FROM (SELECT 1 FROM person_record_keys AS p WHERE p.key = k.key LIMIT :cap) AS s)"
    " <= :max_block"
    f") SELECT {_RECORD_COLUMNS} FROM person_records AS r"
    " WHERE r.id IN (SELECT p.record_id FROM person_record_keys AS p JOIN usable AS u ON p.key = u.key)"
)

_INSERT_KEYS = sa.text(
    "INSERT INTO person_record_keys (key, record_id)"
    " SELECT key, record_id FROM unnest(CAST(:keys AS text[]), CAST(:record_ids AS uuid[])) AS t(key, record_id)"
)

_TRAINING_RECORDS = sa.text(
    f"SELECT {_RECORD_COLUMNS} FROM person_records AS r ORDER BY r.id DESC LIMIT :limit"
)


def key_lock(key: str) -> int:
    """A stable signed 64-bit advisory-lock key for a blocking key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"omni-match").digest()
    return int.from_bytes(digest, "big", signed=True)


class MatchRepository:
    """Reads and writes the matcher's tables within the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_keys(self, keys: Sequence[str]) -> None:
        """Take the advisory lock of every blocking key, in ascending lock-key order, until the transaction ends."""
        lock_keys = sorted({key_lock(key) for key in keys})
        if lock_keys:
            await self.session.execute(_LOCK_KEYS, {"keys": lock_keys})

    async def records_sharing_keys(self, keys: Sequence[str], *, max_block: int) -> list[StoredRecord]:
        """The records filed under any of the keys whose block holds at most max_block records."""
        if not keys:
            return []
        result = await self.session.execute(
            _SHARING_KEYS, {"keys": list(keys), "cap": max_block + 1, "max_block": max_block}
        )
        return [_stored_record(row) for row in result]

    async def add_records(self, records: Sequence[StoredRecord], *, source: str, now: datetime) -> None:
        """File the records and their blocking keys."""
        if not records:
            return
        await self.session.execute(
            sa.insert(PersonRecordRow),
            [
                {
                    "id": r.id,
                    "person_id": r.person_id,
                    "source": source,
                    **{f: r.record.value(f) for f in _RECORD_FIELDS},
                    "identifiers": sorted(r.record.identifiers),
                    "blocking_keys": list(r.keys),
                    "created_at": now,
                    "filed_under": r.origin,
                }
                for r in records
            ],
        )
        pairs = [(key, r.id) for r in records for key in r.keys]
        if pairs:
            await self.session.execute(
                _INSERT_KEYS, {"keys": [k for k, _ in pairs], "record_ids": [i for _, i in pairs]}
            )

    async def add_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Append decisions to the lineage."""
        if decisions:
            await self.session.execute(sa.insert(MatchDecisionRow), [_decision_row(d) for d in decisions])

    async def decisions_of_request(self, request_id: str) -> list[DecisionRecord]:
        """The decisions made for a request id, in request order."""
        query = (
            sa.select(MatchDecisionRow)
            .where(MatchDecisionRow.request_id == request_id)
            .order_by(MatchDecisionRow.position)
        )
        return [_decision_record(row) for row in (await self.session.execute(query)).scalars()]

    async def decisions_about(
        self, person_ids: Sequence[uuid.UUID], *, after: uuid.UUID | None, limit: int
    ) -> list[DecisionRecord]:
        """The decisions that linked or created any of these persons or named them (as a candidate, a holder
        of the record's identifiers or the person a review was settled for), oldest first."""
        query = (
            sa.select(MatchDecisionRow)
            .where(MatchDecisionRow.person_ids.overlap(list(person_ids)))
            .order_by(MatchDecisionRow.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(MatchDecisionRow.id > after)
        return [_decision_record(row) for row in (await self.session.execute(query)).scalars()]

    async def open_reviews(self, *, after: uuid.UUID | None, limit: int) -> list[DecisionRecord]:
        """Reviews nobody has settled yet, oldest first."""
        query = (
            sa.select(MatchDecisionRow)
            .where(MatchDecisionRow.decision == Decision.REVIEW.value, MatchDecisionRow.settled_at.is_(None))
            .order_by(MatchDecisionRow.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(MatchDecisionRow.id > after)
        return [_decision_record(row) for row in (await self.session.execute(query)).scalars()]

    async def decision(self, decision_id: uuid.UUID, *, lock: bool = False) -> DecisionRecord | None:
        """A decision by id; with lock, its row is locked until the transaction ends."""
        query = sa.select(MatchDecisionRow).where(MatchDecisionRow.id == decision_id)
        if lock:
            query = query.with_for_update()
        row = (await self.session.execute(query)).scalar_one_or_none()
        if row is not None and lock:
            await self.session.refresh(row)
        return None if row is None else _decision_record(row)

    async def settle(self, review_id: uuid.UUID, settlement: Settlement) -> None:
        """Record a review's settlement; the review is then also listed under the person it was settled for."""
        await self.session.execute(
            sa.update(MatchDecisionRow)
            .where(MatchDecisionRow.id == review_id)
            .values(
                settled_at=settlement.settled_at,
                settled_by=settlement.reviewer,
                settle_reason=settlement.reason,
                settled_decision_id=settlement.decision_id,
                settled_outcome=settlement.outcome.value,
                settled_person_id=settlement.person_id,
                person_ids=sa.func.array_append(
                    sa.func.array_remove(MatchDecisionRow.person_ids, settlement.person_id),
                    settlement.person_id,
                ),
            )
            .execution_options(synchronize_session=False)
        )

    async def current_model(self) -> StoredModel | None:
        """The highest model version, if any was trained."""
        query = sa.select(MatchModelRow).order_by(MatchModelRow.version.desc()).limit(1)
        row = (await self.session.execute(query)).scalar_one_or_none()
        return _stored_model(row) if row is not None else None

    async def lock_models(self) -> None:
        """Take the lock that orders new model versions until the transaction ends."""
        await self.session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MODELS_LOCK_KEY})

    async def model_of_request(self, request_id: str) -> StoredModel | None:
        """The model version stored by a training call with this request id."""
        query = sa.select(MatchModelRow).where(MatchModelRow.request_id == request_id)
        row = (await self.session.execute(query)).scalar_one_or_none()
        return _stored_model(row) if row is not None else None

    async def add_model(
        self,
        model: MatchModel,
        *,
        converged: bool,
        request_id: str | None,
        now: datetime,
        request_fingerprint: bytes | None = None,
    ) -> None:
        """Store a model version."""
        self.session.add(
            MatchModelRow(
                version=model.version,
                parameters=model.to_json(),
                trained_pairs=model.trained_pairs,
                iterations=model.iterations,
                converged=converged,
                request_id=request_id,
                request_fingerprint=request_fingerprint,
                created_at=now,
            )
        )
        await self.session.flush()

    async def training_records(self, limit: int) -> list[StoredRecord]:
        """Up to limit stored records, newest first."""
        result = await self.session.execute(_TRAINING_RECORDS, {"limit": limit})
        return [_stored_record(row) for row in result]

    async def forget_person(self, person_id: uuid.UUID) -> int:
        """Delete the records filed under a person and the decisions naming it; return the records deleted.

        For erasure: the records hold the person's name, address and date of birth.
        """
        deleted = await self.session.execute(
            sa.delete(PersonRecordRow).where(PersonRecordRow.person_id == person_id)
        )
        await self.session.execute(
            sa.delete(MatchDecisionRow).where(MatchDecisionRow.person_ids.contains([person_id]))
        )
        return int(getattr(deleted, "rowcount", 0) or 0)


def _normalised(row: Any) -> NormalisedRecord:
    return NormalisedRecord(
        **{f: getattr(row, f) for f in _RECORD_FIELDS}, identifiers=frozenset(row.identifiers or ())
    )


def _stored_record(row: Any) -> StoredRecord:
    return StoredRecord(row.id, row.person_id, _normalised(row), tuple(row.blocking_keys), row.filed_under)


def _stored_model(row: MatchModelRow) -> StoredModel:
    model = MatchModel.from_json(
        row.version, row.parameters, trained_pairs=row.trained_pairs, iterations=row.iterations
    )
    return StoredModel(model, row.created_at, row.request_id, row.request_fingerprint)


def _record_json(record: NormalisedRecord) -> dict[str, Any]:
    return {**{f: record.value(f) for f in _RECORD_FIELDS}, "identifiers": sorted(record.identifiers)}


def _decision_row(decision: DecisionRecord) -> dict[str, Any]:
    person_ids = [decision.person_id] if decision.person_id is not None else []
    for person_id in (*(c.person_id for c in decision.candidates), *decision.holders):
        if person_id not in person_ids:
            person_ids.append(person_id)
    return {
        "id": decision.id,
        "request_id": decision.request_id,
        "position": decision.position,
        "request_fingerprint": decision.fingerprint,
        "decision": decision.decision.value,
        "person_id": decision.person_id,
        "record_id": decision.record_id,
        "probability": decision.probability,
        "model_version": decision.model_version,
        "link_threshold": decision.link_threshold,
        "review_threshold": decision.review_threshold,
        "source": decision.source,
        "record": _record_json(decision.record),
        "candidates": [_candidate_json(c) for c in decision.candidates],
        "person_ids": person_ids,
        "decided_at": decision.decided_at,
        "identifier_person_ids": list(decision.holders),
        "proposed_merge_person_ids": list(decision.proposed_merge),
        "settles_decision_id": decision.settles,
    }


def _candidate_json(candidate: Candidate) -> dict[str, Any]:
    return {
        "person_id": str(candidate.person_id),
        "record_id": str(candidate.record_id),
        "probability": candidate.probability,
        "match_weight": candidate.match_weight,
        "comparisons": [[c.field, c.level, c.weight] for c in candidate.comparisons],
    }


def _candidate(data: dict[str, Any]) -> Candidate:
    return Candidate(
        person_id=uuid.UUID(data["person_id"]),
        record_id=uuid.UUID(data["record_id"]),
        probability=float(data["probability"]),
        match_weight=float(data["match_weight"]),
        comparisons=tuple(
            FieldComparison(field, level, float(weight))
            for field, level, weight in data["comparisons"]
            if field in FIELD_INDEX
        ),
    )


def _decision_record(row: MatchDecisionRow) -> DecisionRecord:
    record = row.record
    return DecisionRecord(
        id=row.id,
        decision=Decision(row.decision),
        person_id=row.person_id,
        record_id=row.record_id,
        probability=row.probability,
        candidates=tuple(_candidate(c) for c in row.candidates),
        model_version=row.model_version,
        link_threshold=row.link_threshold,
        review_threshold=row.review_threshold,
        source=row.source,
        request_id=row.request_id,
        position=row.position,
        fingerprint=row.request_fingerprint,
        record=NormalisedRecord(
            **{f: str(record.get(f, "")) for f in _RECORD_FIELDS},
            identifiers=frozenset(record.get("identifiers", ())),
        ),
        decided_at=row.decided_at,
        holders=tuple(row.identifier_person_ids or ()),
        proposed_merge=tuple(row.proposed_merge_person_ids or ()),
        settles=row.settles_decision_id,
        settlement=_settlement(row),
    )


def _settlement(row: MatchDecisionRow) -> Settlement | None:
    if row.settled_at is None or row.settled_decision_id is None:
        return None
    assert row.settled_person_id is not None
    return Settlement(
        outcome=ReviewOutcome(row.settled_outcome),
        person_id=row.settled_person_id,
        decision_id=row.settled_decision_id,
        reviewer=row.settled_by,
        reason=row.settle_reason,
        settled_at=row.settled_at,
    )
