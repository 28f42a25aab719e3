"""Protobuf ⇄ domain for the MatchingService: reading records (with their field violations), writing results."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Protocol

from omni.common.v1 import common_pb2
from omni.identity.v1 import matching_pb2
from omni_identity.matching.linking import DecisionRecord, ReviewOutcome, Settlement, StoredModel
from omni_identity.matching.matcher import Candidate, Decision, Policy
from omni_identity.matching.normalise import normalise_record
from omni_identity.matching.records import Identifier, NormalisedRecord, PersonRecord
from omni_kit.errors import Violations

MIN_BIRTH_YEAR = 1800
_TEXT_FIELDS = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
)

REVIEW_OUTCOMES = {
    ReviewOutcome.LINK: matching_pb2.MATCH_REVIEW_OUTCOME_LINK,
    ReviewOutcome.NEW_PERSON: matching_pb2.MATCH_REVIEW_OUTCOME_NEW_PERSON,
}

DECISIONS = {
    Decision.LINKED: matching_pb2.MATCH_DECISION_LINKED,
    Decision.REVIEW: matching_pb2.MATCH_DECISION_REVIEW,
    Decision.NEW_PERSON: matching_pb2.MATCH_DECISION_NEW_PERSON,
}


class NormalisedIdentifier(Protocol):
    """An identifier as the identity graph's normaliser returns it."""

    @property
    def type(self) -> str:
        """The identifier type."""

    @property
    def value(self) -> str:
        """The normalised value."""


# The identity graph's identifier normaliser: raises ValueError (with .part "type" or "value" when it
# knows which) for what it refuses.
IdentifierNormaliser = Callable[[str, str], NormalisedIdentifier]


def read_record(
    message: matching_pb2.PersonRecord,
    path: str,
    violations: Violations,
    normalise_identifier: IdentifierNormaliser,
    *,
    today: date,
) -> NormalisedRecord | None:
    """Normalise a record, recording what matching.proto cannot declare under path (a date of birth that is
    no calendar date or not within the years allowed, identifiers the graph's normaliser refuses, a record
    holding nothing to match on); None when it has any. The declared constraints are checked apart."""
    before = len(violations.items)
    birth = None
    if message.HasField("date_of_birth"):
        birth = _read_date(message.date_of_birth, f"{path}.date_of_birth", violations, today=today)
    identifiers = []
    for i, identifier in enumerate(message.identifiers):
        try:
            key = normalise_identifier(identifier.type, identifier.value)
        except ValueError as error:
            part = getattr(error, "part", "value")
            violations.add(f"{path}.identifiers[{i}].{part}", getattr(error, "description", str(error)))
            continue
        identifiers.append(Identifier(key.type, key.value))
    if len(violations.items) > before:
        return None
    record = normalise_record(
        PersonRecord(
            date_of_birth=birth,
            identifiers=tuple(dict.fromkeys(identifiers)),
            **{name: getattr(message, name) for name in _TEXT_FIELDS},
        )
    )
    if record.is_empty:
        violations.add(
            path, "holds nothing to match on: give a name, an address, a date of birth or an identifier"
        )
        return None
    return record


def _read_date(
    message: matching_pb2.CalendarDate, path: str, violations: Violations, *, today: date
) -> date | None:
    try:
        value = date(message.year, message.month, message.day)
    except ValueError:
        violations.add(path, "is not a calendar date")
        return None
    if value.year < MIN_BIRTH_YEAR or value > today:
        violations.add(path, f"must lie between {MIN_BIRTH_YEAR} and today")
        return None
    return value


def result_message(decision: DecisionRecord) -> matching_pb2.MatchResult:
    """A decision as a MatchResult."""
    return matching_pb2.MatchResult(
        decision=DECISIONS[decision.decision],
        person_id=_id(decision.person_id),
        candidates=[candidate_message(c) for c in decision.candidates],
        record_id=_id(decision.record_id),
        decision_id=str(decision.id),
        probability=decision.probability,
        model_version=decision.model_version,
        identifier_person_ids=[str(p) for p in decision.holders],
        proposed_merge_person_ids=[str(p) for p in decision.proposed_merge],
    )


def candidate_message(candidate: Candidate) -> matching_pb2.MatchCandidate:
    """A candidate as a MatchCandidate."""
    return matching_pb2.MatchCandidate(
        person_id=str(candidate.person_id),
        probability=candidate.probability,
        match_weight=candidate.match_weight,
        comparisons=[
            matching_pb2.MatchFieldComparison(field=c.field, level=c.level, weight=c.weight)
            for c in candidate.comparisons
        ],
        record_id=str(candidate.record_id),
    )


def decision_message(decision: DecisionRecord) -> matching_pb2.MatchDecisionRecord:
    """A decision as a lineage entry."""
    message = matching_pb2.MatchDecisionRecord(
        id=str(decision.id),
        decision=DECISIONS[decision.decision],
        person_id=_id(decision.person_id),
        record_id=_id(decision.record_id),
        probability=decision.probability,
        candidates=[candidate_message(c) for c in decision.candidates],
        model_version=decision.model_version,
        link_threshold=decision.link_threshold,
        review_threshold=decision.review_threshold,
        source=decision.source,
        request_id=decision.request_id or "",
        record=record_message(decision.record),
        identifier_person_ids=[str(p) for p in decision.holders],
        settles_decision_id=_id(decision.settles),
        proposed_merge_person_ids=[str(p) for p in decision.proposed_merge],
    )
    message.decide_time.FromDatetime(decision.decided_at.astimezone(UTC))
    if decision.settlement is not None:
        message.settlement.CopyFrom(settlement_message(decision.settlement))
    return message


def settlement_message(settlement: Settlement) -> matching_pb2.MatchReviewSettlement:
    """A review's settlement as a message."""
    message = matching_pb2.MatchReviewSettlement(
        outcome=REVIEW_OUTCOMES[settlement.outcome],
        person_id=str(settlement.person_id),
        decision_id=str(settlement.decision_id),
        reviewer=settlement.reviewer,
        reason=settlement.reason,
    )
    message.settle_time.FromDatetime(settlement.settled_at.astimezone(UTC))
    return message


def record_message(record: NormalisedRecord) -> matching_pb2.PersonRecord:
    """A normalised record as a PersonRecord."""
    message = matching_pb2.PersonRecord(
        **{name: record.value(name) for name in _TEXT_FIELDS},
        identifiers=[
            common_pb2.Identifier(type=t, value=v)
            for t, v in (identifier.split(":", 1) for identifier in sorted(record.identifiers))
        ],
    )
    birth = record.date_of_birth
    if birth:
        message.date_of_birth.CopyFrom(
            matching_pb2.CalendarDate(year=int(birth[:4]), month=int(birth[4:6]), day=int(birth[6:8]))
        )
    return message


def model_message(stored: StoredModel, policy: Policy) -> matching_pb2.MatchModel:
    """The model in use, with the thresholds applied to it."""
    model = stored.model
    message = matching_pb2.MatchModel(
        version=model.version,
        prior=model.prior,
        fields=[
            matching_pb2.MatchFieldParameters(
                field=f.field,
                levels=[
                    matching_pb2.MatchLevelParameters(level=level, m_probability=m, u_probability=u, weight=w)
                    for level, m, u, w in zip(f.levels, f.m, f.u, f.weights(), strict=True)
                ],
            )
            for f in model.fields
        ],
        link_threshold=policy.link_threshold,
        review_threshold=policy.review_threshold,
        trained_pairs=model.trained_pairs,
        iterations=model.iterations,
    )
    if stored.created_at is not None:
        message.create_time.FromDatetime(stored.created_at.astimezone(UTC))
    return message


def _id(value: object | None) -> str:
    return "" if value is None else str(value)


def utc_today() -> date:
    """Today's date in UTC, the bound of a date of birth."""
    return datetime.now(UTC).date()
