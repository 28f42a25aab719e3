"""Deciding, record by record, whether a record is a person already known, a new person, or a question for
a person to answer: blocking, comparison and the model's probabilities, then the thresholds.

A batch is decided in order against the stored records that share a blocking key with any of its records,
and each record the batch stores is a candidate for the records after it, as if they had come one by one.

The identity graph has the last word on identifiers: a record carrying an identifier that a person of the
graph holds is that person's, or a question (see ``_heed_holders``); the matcher never joins two persons.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from omni_identity.matching.blocking import blocking_keys, candidate_pairs
from omni_identity.matching.comparison import COMPARISONS, MISSING, compare
from omni_identity.matching.model import MatchModel, probability
from omni_identity.matching.records import NormalisedRecord

_FIELDS = tuple(c.field for c in COMPARISONS)
_LEVELS = tuple(c.levels for c in COMPARISONS)
_GIVEN_NAME = _FIELDS.index("given_name")
_GIVEN_NAME_ELSE = len(_LEVELS[_GIVEN_NAME]) - 1
_DATE_OF_BIRTH = _FIELDS.index("date_of_birth")
_DATE_OF_BIRTH_ELSE = len(_LEVELS[_DATE_OF_BIRTH]) - 1


class Decision(Enum):
    """What became of a record."""

    LINKED = "linked"
    """It is a known person's: the best candidate reached the link threshold, and only that one did."""
    REVIEW = "review"
    """Someone should look: the best candidate is between the thresholds, several reached the link one, or
    the best differs in both given name and date of birth (a relative)."""
    NEW_PERSON = "new_person"
    """No candidate reached the review threshold: a person was created for it."""


class Repair(Enum):
    """What to do when a record matches several persons that match each other (one person split in two)."""

    PROPOSE = "propose"
    """Send the record to review, naming the persons to merge (an operator merges them and settles)."""
    MERGE = "merge"
    """Merge the persons through the graph's own merge (with lineage) and link the record to the survivor."""


@dataclass(frozen=True)
class Policy:
    """The thresholds on the best candidate's match probability, and how much to return and compare."""

    link_threshold: float = 0.95
    review_threshold: float = 0.6
    max_candidates: int = 5
    max_block: int = 500
    review_relatives: bool = True
    """Send pairs that differ in both given name and date of birth to review even above the link threshold."""
    repair: Repair = Repair.PROPOSE
    """Cluster repair of persons found to be one (see Repair)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.review_threshold <= self.link_threshold < 1.0:
            raise ValueError("thresholds must satisfy 0 < review <= link < 1")


@dataclass(frozen=True)
class StoredRecord:
    """A record filed under a person, with its blocking keys.

    filed_under is the person it was first filed under (None: person_id): merges move the record to the
    survivor, and an unmerge moves it back to whoever filed_under's merged_into chain then leads to.
    """

    id: uuid.UUID
    person_id: uuid.UUID
    record: NormalisedRecord
    keys: tuple[str, ...]
    filed_under: uuid.UUID | None = None

    @property
    def origin(self) -> uuid.UUID:
        """The person the record was filed under (its lineage), whose merges it follows."""
        return self.filed_under if self.filed_under is not None else self.person_id


@dataclass(frozen=True)
class FieldComparison:
    """How one field of the record compared with a candidate's, and the evidence that carries."""

    field: str
    level: str
    weight: float


@dataclass(frozen=True)
class Candidate:
    """A person the record may belong to, scored by their best-matching stored record."""

    person_id: uuid.UUID
    record_id: uuid.UUID
    probability: float
    match_weight: float
    comparisons: tuple[FieldComparison, ...]


@dataclass(frozen=True)
class Outcome:
    """The decision about one record: the person it belongs to (none for REVIEW) and the candidates seen.

    stored is the record filed by this decision (None for REVIEW, or when the person already had an
    identical one, whose id is record_id then).
    """

    decision: Decision
    person_id: uuid.UUID | None
    record_id: uuid.UUID | None
    record: NormalisedRecord
    keys: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    stored: StoredRecord | None
    holders: tuple[uuid.UUID, ...] = ()
    """The persons of the identity graph holding any of the record's identifiers when it was decided."""
    proposed_merge: tuple[uuid.UUID, ...] = ()
    """Cluster repair: the persons (two or more, sorted) the record matched above the link threshold that
    also match each other above it; the record goes to review naming them."""

    @property
    def probability(self) -> float:
        """The best candidate's match probability (0 without candidates)."""
        return self.candidates[0].probability if self.candidates else 0.0


@dataclass
class _Index:
    """Stored records by blocking key, growing as the batch files records."""

    max_block: int
    by_key: dict[str, list[StoredRecord]] = field(default_factory=dict)

    def add(self, stored: StoredRecord) -> None:
        for key in stored.keys:
            self.by_key.setdefault(key, []).append(stored)

    def candidates(self, keys: Sequence[str]) -> list[StoredRecord]:
        seen: dict[uuid.UUID, StoredRecord] = {}
        for key in keys:
            block = self.by_key.get(key, [])
            if len(block) > self.max_block:
                continue
            for stored in block:
                seen.setdefault(stored.id, stored)
        return list(seen.values())


def decide_batch(
    records: Sequence[NormalisedRecord],
    existing: Sequence[StoredRecord],
    model: MatchModel,
    policy: Policy,
    *,
    new_id: Callable[[], uuid.UUID],
    holders: Mapping[str, uuid.UUID] | None = None,
) -> list[Outcome]:
    """Decide each record in order against the existing records and those the batch filed before it.

    holders: the live person of the identity graph holding each of the records' identifiers ("type:value")
    that one holds; identifiers of records the batch files count as held by their person from then on.
    """
    held = dict(holders or {})
    stored_before = _Index(policy.max_block)
    for stored in existing:
        stored_before.add(stored)
    all_keys = [tuple(blocking_keys(record)) for record in records]
    # Comparisons do not depend on decisions, so every pair that may be needed is compared up front in two
    # vectorised passes: with the records stored before the batch, and with the batch's earlier records
    # (used only if the earlier record was filed by the time the later one is decided).
    candidates = [stored_before.candidates(keys) for keys in all_keys]
    vectors = compare(
        [record for record, found in zip(records, candidates, strict=True) for _ in found],
        [stored.record for found in candidates for stored in found],
    )
    weights = model.match_weights(vectors)
    earlier = sorted(
        (i, j)
        for i, j in candidate_pairs(
            [list(k) for k in all_keys], [list(k) for k in all_keys], max_block=policy.max_block
        )
        if j < i
    )
    earlier_vectors = compare([records[i] for i, _ in earlier], [records[j] for _, j in earlier])
    earlier_weights = model.match_weights(earlier_vectors)
    earlier_rows: dict[int, list[tuple[int, int]]] = {}
    for row, (i, j) in enumerate(earlier):
        earlier_rows.setdefault(i, []).append((j, row))
    table = model.weight_table()
    filed: dict[int, StoredRecord] = {}
    outcomes = []
    offset = 0
    for i, (record, keys, found) in enumerate(zip(records, all_keys, candidates, strict=True)):
        rows = slice(offset, offset + len(found))
        offset += len(found)
        new = [(filed[j], row) for j, row in earlier_rows.get(i, []) if j in filed]
        scored = _Scored(
            [*found, *(stored for stored, _ in new)],
            np.concatenate([vectors[rows], earlier_vectors[[row for _, row in new]]]),
            np.concatenate([weights[rows], earlier_weights[[row for _, row in new]]]),
        )
        outcome = _heed_holders(_decide(record, keys, scored, model, table, policy, new_id), held, new_id)
        if outcome.stored is not None:
            filed[i] = outcome.stored
        if outcome.person_id is not None:
            for identifier in record.identifiers:
                held.setdefault(identifier, outcome.person_id)
        outcomes.append(outcome)
    return outcomes


@dataclass(frozen=True)
class _Scored:
    """A record's candidate records with their comparison vectors and match weights, row for row."""

    records: list[StoredRecord]
    vectors: npt.NDArray[np.int8]
    weights: npt.NDArray[np.float64]


def _decide(
    record: NormalisedRecord,
    keys: tuple[str, ...],
    scored: _Scored,
    model: MatchModel,
    table: npt.NDArray[np.float64],
    policy: Policy,
    new_id: Callable[[], uuid.UUID],
) -> Outcome:
    ranked = _rank(scored)
    linked = [k for k in ranked if scored.weights[k] >= _weight_of(policy.link_threshold)]
    shown = _candidates(scored, ranked[: policy.max_candidates], table)
    best = shown[0] if shown else None
    relative = policy.review_relatives and bool(linked) and _relative(scored.vectors[linked[0]])
    if best is not None and len(linked) == 1 and not relative:
        same = next((s for s in scored.records if s.person_id == best.person_id and s.record == record), None)
        if same is not None:
            return Outcome(Decision.LINKED, best.person_id, same.id, record, keys, shown, None)
        # Filed under the person its best match was filed under, so that undoing a merge of that person
        # takes this record along (as an identifier found only through identifiers going back).
        origin = scored.records[ranked[0]].origin
        stored = StoredRecord(new_id(), best.person_id, record, keys, origin)
        return Outcome(Decision.LINKED, best.person_id, stored.id, record, keys, shown, stored)
    if best is not None and best.probability >= policy.review_threshold:
        proposed = _split_person(scored, linked, model, policy) if len(linked) > 1 and not relative else ()
        return Outcome(Decision.REVIEW, None, None, record, keys, shown, None, proposed_merge=proposed)
    person_id = new_id()
    stored = StoredRecord(new_id(), person_id, record, keys, person_id)
    return Outcome(Decision.NEW_PERSON, stored.person_id, stored.id, record, keys, shown, stored)


def _heed_holders(
    outcome: Outcome, held: Mapping[str, uuid.UUID], new_id: Callable[[], uuid.UUID]
) -> Outcome:
    """The decision once the identity graph's holders of the record's identifiers are taken into account.

    An identifier is deterministic evidence, stronger than any agreement of names and addresses, but the
    matcher never joins two persons (that is a resolve's or an operator's call, with its own lineage):
    - nobody holds one: the decision stands;
    - one person holds them and the record was linked to it: it stands;
    - one person holds them, the record would start a new person, and none of the holder's records was
      among the candidates: the record is the holder's (LINKED), as a resolve of the identifiers would say;
    - otherwise (several holders, linked to someone else, or the holder's own records were compared and
      found unlike the record): REVIEW, with the holders shown, for an operator to settle.
    """
    holders = tuple(sorted({held[i] for i in outcome.record.identifiers if i in held}))
    if not holders:
        return outcome
    review = dataclasses.replace(
        outcome, decision=Decision.REVIEW, person_id=None, record_id=None, stored=None, holders=holders
    )
    if len(holders) > 1 or outcome.decision is Decision.REVIEW:
        return review
    [holder] = holders
    if outcome.decision is Decision.LINKED:
        return dataclasses.replace(outcome, holders=holders) if outcome.person_id == holder else review
    if any(candidate.person_id == holder for candidate in outcome.candidates):
        return review
    stored = StoredRecord(new_id(), holder, outcome.record, outcome.keys, holder)
    return dataclasses.replace(
        outcome,
        decision=Decision.LINKED,
        person_id=holder,
        record_id=stored.id,
        stored=stored,
        holders=holders,
    )


def _split_person(
    scored: _Scored, linked: list[int], model: MatchModel, policy: Policy
) -> tuple[uuid.UUID, ...]:
    """The persons of the linked rows, sorted, when their records match each other above the link threshold
    (one person filed twice: a cluster to repair); () otherwise.

    Each pair of persons is compared through the records the new one matched best; relatives (given name
    and date of birth both different) never count as one person when the policy reviews them.
    """
    rows = [scored.records[k] for k in linked]
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
    vectors = compare([a.record for a, _ in pairs], [b.record for _, b in pairs])
    weights = model.match_weights(vectors)
    if (weights < _weight_of(policy.link_threshold)).any():
        return ()
    if policy.review_relatives and any(_relative(v) for v in vectors):
        return ()
    return tuple(sorted(stored.person_id for stored in rows))


def _relative(vector: npt.NDArray[np.int8]) -> bool:
    """True when given name and date of birth both disagree: what a relative at the same address looks like.

    Address fields agree together, so their evidence adds up past any threshold for two people of one
    household; with Policy.review_relatives such a pair is not linked automatically, however well the rest
    agrees.
    """
    return bool(vector[_GIVEN_NAME] == _GIVEN_NAME_ELSE and vector[_DATE_OF_BIRTH] == _DATE_OF_BIRTH_ELSE)


def _weight_of(probability: float) -> float:
    """The match weight (log2 odds) of a probability."""
    return math.log2(probability / (1.0 - probability))


def _rank(scored: _Scored) -> list[int]:
    """Row numbers of each person's best-scoring record, best person first."""
    best_by_person: dict[uuid.UUID, int] = {}
    for k, stored in enumerate(scored.records):
        current = best_by_person.get(stored.person_id)
        if current is None or scored.weights[k] > scored.weights[current]:
            best_by_person[stored.person_id] = k
    return sorted(best_by_person.values(), key=lambda k: (-scored.weights[k], str(scored.records[k].id)))


def _candidates(scored: _Scored, rows: list[int], table: npt.NDArray[np.float64]) -> tuple[Candidate, ...]:
    if not rows:
        return ()
    probabilities = probability(scored.weights[rows])
    return tuple(
        Candidate(
            person_id=scored.records[k].person_id,
            record_id=scored.records[k].id,
            probability=float(p),
            match_weight=float(scored.weights[k]),
            comparisons=tuple(
                FieldComparison(field, levels[level], float(table[i, level]))
                for i, (field, levels, level) in enumerate(
                    zip(_FIELDS, _LEVELS, scored.vectors[k].tolist(), strict=True)
                )
                if level != MISSING
            ),
        )
        for k, p in zip(rows, probabilities, strict=True)
    )
