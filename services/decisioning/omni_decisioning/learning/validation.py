"""Checks of the learning end's requests (RecordOutcome, ImportDecisions, SetLearningPolicy, EvaluatePolicy):
what the proto declares (protovalidate) and what it cannot say (items listed twice, a value only on a
conversion, a consistent imported decision, a time window that is not empty), all as field violations at
once; nothing is written before a request has passed."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_decisioning.entities import LoggedCandidate
from omni_decisioning.evaluation.evaluate import Request
from omni_decisioning.evaluation.policies import RankingCandidate, ThompsonCandidate, WeightsCandidate
from omni_decisioning.learning.policy import CLICK, LearningPolicy, OfferTerms
from omni_decisioning.learning.repository import ImportedDecision, StoredOutcome
from omni_kit import validation
from omni_kit.errors import Violations

DEFAULT_BOOTSTRAP = 1000
MIN_BOOTSTRAP = 100
DEFAULT_DRAWS = 100_000
DEFAULT_MAX_UNCOVERED = 0.001
# Timestamps are accepted between these (PostgreSQL and Python both hold them).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, tzinfo=UTC)


def _repeats(violations: Violations, path: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            violations.add(f"{path}[{index}]", f"listed twice: {value}")
        seen.add(value)


def _instant(message: Timestamp, path: str, violations: Violations) -> datetime | None:
    if message.seconds == 0 and message.nanos == 0:
        return None
    try:
        value = message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        violations.add(path, str(error))
        return None
    if not _EARLIEST <= value <= _LATEST:
        violations.add(path, "must lie between 1970 and 9999")
        return None
    return value


def record_outcome(request: d.RecordOutcomeRequest) -> StoredOutcome:
    """The outcome to record; InvalidArgument listing every bad field otherwise."""
    violations = validation.check(request)
    outcome = request.outcome
    if outcome.value and outcome.type != d.OUTCOME_TYPE_CONVERSION:
        violations.add("outcome.value", "only a conversion has a value")
    occur_time = _instant(outcome.occur_time, "outcome.occur_time", violations)
    violations.raise_if_any()
    return StoredOutcome(
        outcome_id=outcome.outcome_id,
        decision_id=uuid.UUID(outcome.decision_id),
        offer_id=uuid.UUID(outcome.offer_id),
        type=int(outcome.type),
        value=float(outcome.value),
        occur_time=occur_time or datetime.now(UTC),
    )


def import_decisions(request: d.ImportDecisionsRequest) -> list[ImportedDecision]:
    """The decisions to import; InvalidArgument listing every bad field otherwise. Each needs at least one
    chosen candidate, the chosen ones at distinct ranks from 1 with a rank_propensity above 0 and no larger
    than their propensity; offers and decision ids are listed once."""
    violations = validation.check_counts(request)
    violations.raise_if_any()
    validation.check(request, violations)
    now = datetime.now(UTC)
    _repeats(violations, "decisions", (decision.decision_id for decision in request.decisions))
    imported = []
    for i, decision in enumerate(request.decisions):
        path = f"decisions[{i}]"
        _repeats(violations, f"{path}.candidates", (c.offer_id for c in decision.candidates))
        chosen = [(k, c) for k, c in enumerate(decision.candidates) if c.chosen]
        violations.check(bool(chosen), f"{path}.candidates", "at least one candidate must be chosen")
        ranks: set[int] = set()
        for k, candidate in chosen:
            at = f"{path}.candidates[{k}]"
            violations.check(candidate.rank >= 1, f"{at}.rank", "a chosen candidate has a rank from 1")
            violations.check(candidate.rank not in ranks, f"{at}.rank", "two chosen candidates share a rank")
            ranks.add(candidate.rank)
            violations.check(
                candidate.rank_propensity > 0,
                f"{at}.rank_propensity",
                "a chosen candidate had a chance above 0",
            )
            violations.check(
                candidate.rank_propensity <= candidate.propensity,
                f"{at}.propensity",
                "must be at least the rank_propensity (being chosen at a rank is being chosen)",
            )
        create_time = _instant(decision.create_time, f"{path}.create_time", violations)
        if violations:
            continue
        imported.append(
            ImportedDecision(
                id=uuid.UUID(decision.decision_id),
                person_id=uuid.UUID(decision.person_id),
                touchpoint=decision.touchpoint,
                candidates=tuple(
                    LoggedCandidate(
                        offer_id=uuid.UUID(c.offer_id),
                        score=c.score,
                        rank=c.rank,
                        propensity=c.propensity,
                        rank_propensity=c.rank_propensity if c.chosen else 0.0,
                        chosen=c.chosen,
                    )
                    for c in decision.candidates
                ),
                policy=decision.policy or "imported",
                model_version=decision.model_version,
                create_time=create_time or now,
            )
        )
    violations.raise_if_any()
    return imported


def set_learning_policy(request: d.SetLearningPolicyRequest) -> LearningPolicy:
    """The learning policy to set; InvalidArgument listing every bad field otherwise."""
    violations = validation.check_counts(request.policy, prefix="policy")
    violations.raise_if_any()
    validation.check(request, violations)
    policy = request.policy
    _repeats(violations, "policy.offers", (offer.offer_id for offer in policy.offers))
    violations.raise_if_any()
    return LearningPolicy(
        touchpoint=policy.touchpoint,
        enabled=policy.enabled,
        exploration=policy.exploration,
        prior_alpha=policy.prior_alpha,
        prior_beta=policy.prior_beta,
        success=int(policy.success) or CLICK,
        offers={
            uuid.UUID(offer.offer_id): OfferTerms(
                prior_alpha=offer.prior_alpha,
                prior_beta=offer.prior_beta,
                value=offer.value,
                context_weight=offer.context_weight,
                fixed=offer.fixed,
            )
            for offer in policy.offers
        },
    )


def evaluate_policy(request: d.EvaluatePolicyRequest) -> Request:
    """The evaluation asked for; InvalidArgument listing every bad field otherwise."""
    violations = Violations()
    if request.HasField("ranking"):
        validation.check_counts(request.ranking, violations, prefix="ranking")
    elif request.HasField("thompson"):
        validation.check_counts(request.thompson, violations, prefix="thompson")
    violations.raise_if_any()
    validation.check(request, violations)
    if request.bootstrap_samples and request.bootstrap_samples < MIN_BOOTSTRAP:
        violations.add("bootstrap_samples", f"0 (the default) or at least {MIN_BOOTSTRAP}")
    start = _instant(request.start_time, "start_time", violations)
    end = _instant(request.end_time, "end_time", violations)
    if start and end:
        violations.check(end > start, "end_time", "must be after start_time")
    rng = np.random.default_rng(
        request.seed & 0xFFFF_FFFF_FFFF_FFFF
    )  # any int64 seeds; numpy takes only >= 0
    candidate: RankingCandidate | WeightsCandidate | ThompsonCandidate
    if request.HasField("ranking"):
        _repeats(violations, "ranking.offer_ids", request.ranking.offer_ids)
        candidate = RankingCandidate({o: i for i, o in enumerate(request.ranking.offer_ids)})
    elif request.HasField("weights"):
        candidate = WeightsCandidate(dict(request.weights.weights))
    else:
        _repeats(violations, "thompson.arms", (arm.offer_id for arm in request.thompson.arms))
        candidate = ThompsonCandidate(
            {arm.offer_id: (arm.alpha, arm.beta) for arm in request.thompson.arms},
            draws=request.thompson.draws or DEFAULT_DRAWS,
            rng=rng,
        )
    violations.raise_if_any()
    # UUIDs from the request are compared with the log's text form: lower case.
    if isinstance(candidate, RankingCandidate):
        candidate = RankingCandidate({o.lower(): i for o, i in candidate.order.items()})
    elif isinstance(candidate, WeightsCandidate):
        candidate = WeightsCandidate({o.lower(): w for o, w in candidate.weights.items()})
    else:
        candidate = ThompsonCandidate(
            {o.lower(): ab for o, ab in candidate.arms.items()}, draws=candidate.draws, rng=candidate.rng
        )
    return Request(
        touchpoint=request.touchpoint,
        candidate=candidate,
        metric=int(request.metric) or 1,
        start=start,
        end=end,
        bootstrap=request.bootstrap_samples or DEFAULT_BOOTSTRAP,
        seed=request.seed,
        max_uncovered=request.max_uncovered or DEFAULT_MAX_UNCOVERED,
    )
