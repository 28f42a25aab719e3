"""The learning end's RPCs of omni.decisioning.v1.DecisioningService (RecordOutcome, ImportDecisions,
GetDecision, SetLearningPolicy, EvaluatePolicy): protobuf in and out, one transaction per call. Mixed into
the service's servicer (omni_decisioning.api)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_decisioning.evaluation.evaluate import Evaluator, estimate
from omni_decisioning.learning import validation
from omni_decisioning.learning.outcomes import Learning
from omni_decisioning.learning.policy import LearningPolicy
from omni_decisioning.learning.repository import StoredOutcome
from omni_kit import validation as omni_validation
from omni_kit.runtime import Runtime


def _timestamp(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def outcome_to_proto(outcome: StoredOutcome) -> d.Outcome:
    """The wire form of an outcome."""
    return d.Outcome(
        outcome_id=outcome.outcome_id,
        decision_id=str(outcome.decision_id),
        offer_id=str(outcome.offer_id),
        type=d.OutcomeType.ValueType(outcome.type),
        value=outcome.value,
        occur_time=_timestamp(outcome.occur_time),
    )


def policy_to_proto(policy: LearningPolicy) -> d.LearningPolicy:
    """The wire form of a learning policy."""
    return d.LearningPolicy(
        touchpoint=policy.touchpoint,
        enabled=policy.enabled,
        exploration=policy.exploration,
        prior_alpha=policy.prior_alpha,
        prior_beta=policy.prior_beta,
        success=d.OutcomeType.ValueType(policy.success),
        offers=[
            d.OfferLearning(
                offer_id=str(offer_id),
                prior_alpha=terms.prior_alpha,
                prior_beta=terms.prior_beta,
                value=terms.value,
                context_weight=terms.context_weight,
                fixed=terms.fixed,
            )
            for offer_id, terms in policy.offers.items()
        ],
    )


class LearningServicer:
    """The learning end's RPCs; the servicer that mixes this in sets _runtime, _learning and _evaluator."""

    _runtime: Runtime
    _learning: Learning
    _evaluator: Evaluator

    async def RecordOutcome(
        self, request: d.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> d.RecordOutcomeResponse:
        """Record an outcome of a chosen action, once per outcome id."""
        outcome = validation.record_outcome(request)
        async with self._runtime.transaction() as session:
            stored, recorded = await self._learning.record(session, outcome)
        return d.RecordOutcomeResponse(outcome=outcome_to_proto(stored), recorded=recorded)

    async def ImportDecisions(
        self, request: d.ImportDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> d.ImportDecisionsResponse:
        """Add decisions made elsewhere to the decision log (an id already there is left alone)."""
        decisions = validation.import_decisions(request)
        async with self._runtime.transaction() as session:
            imported = await self._learning.import_decisions(session, decisions)
        return d.ImportDecisionsResponse(imported=imported)

    async def GetDecision(
        self, request: d.GetDecisionRequest, context: grpc.aio.ServicerContext
    ) -> d.GetDecisionResponse:
        """A logged decision with its candidates, propensities and outcomes."""
        omni_validation.validate(request)
        async with self._runtime.transaction() as session:
            decision, outcomes = await self._learning.decision(session, uuid.UUID(request.decision_id))
        return d.GetDecisionResponse(
            decision=d.LoggedDecision(
                decision_id=str(decision.id),
                person_id=str(decision.person_id),
                touchpoint=decision.touchpoint,
                candidates=[
                    d.Candidate(
                        offer_id=str(c.offer_id),
                        score=c.score,
                        rank=c.rank,
                        propensity=c.propensity,
                        rank_propensity=c.rank_propensity,
                        chosen=c.chosen,
                    )
                    for c in decision.candidates
                ],
                policy=decision.policy,
                create_time=_timestamp(decision.create_time),
                model_version=decision.model_version,
                outcomes=[outcome_to_proto(outcome) for outcome in outcomes],
            )
        )

    async def SetLearningPolicy(
        self, request: d.SetLearningPolicyRequest, context: grpc.aio.ServicerContext
    ) -> d.SetLearningPolicyResponse:
        """Set a touchpoint's learning policy; Decide uses it from its next group on."""
        policy = validation.set_learning_policy(request)
        async with self._runtime.transaction() as session:
            stored = await self._learning.set_policy(session, policy)
        return d.SetLearningPolicyResponse(policy=policy_to_proto(stored))

    async def EvaluatePolicy(
        self, request: d.EvaluatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> d.EvaluatePolicyResponse:
        """Estimate a candidate policy's value from the decision log (IPW, SNIPW, DR with 95% intervals)."""
        asked = validation.evaluate_policy(request)
        async with self._runtime.transaction() as session:
            rows, rewards = await self._evaluator.logged(session, asked)
        # Numbers, not I/O: off the event loop, so Decide keeps answering meanwhile.
        result = await asyncio.to_thread(estimate, rows, rewards, asked)
        evaluation = result.evaluation
        return d.EvaluatePolicyResponse(
            estimates=[
                d.PolicyEstimate(estimator=e.estimator, value=e.value, ci_low=e.ci_low, ci_high=e.ci_high)
                for e in evaluation.estimates
            ],
            logged_actions=evaluation.actions,
            effective_sample_size=evaluation.effective_sample_size,
            logged_value=evaluation.logged_value,
            uncovered=result.uncovered,
        )
