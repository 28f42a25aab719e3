"""The learning end over gRPC: the decision log's candidates and propensities, RecordOutcome, Thompson
sampling shifting decisions to what converts, imported logs and EvaluatePolicy."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from .conftest import decisioning_with_neighbours
from .support import Decisioning
from .test_decide import create_offer, touchpoint
from .test_erasure import forget, processed


@pytest.fixture(scope="module")
async def learning(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Decisioning]:
    """Decisioning reloading the outcome counts with every group of decisions (refresh 0 s)."""
    async for running in decisioning_with_neighbours(postgres, nats_server, learning_refresh_s=0.0):
        yield running


async def _refused(call: object, code: grpc.StatusCode) -> object:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    assert refused.value.code() == code, refused.value.details()
    return status_details(refused.value)


def _outcome(
    decision_id: str, offer_id: str, kind: int, *, value: float = 0.0, outcome_id: str = ""
) -> d.RecordOutcomeRequest:
    return d.RecordOutcomeRequest(
        outcome=d.Outcome(
            outcome_id=outcome_id or uuid.uuid4().hex,
            decision_id=decision_id,
            offer_id=offer_id,
            type=kind,  # type: ignore[arg-type]
            value=value,
        )
    )


async def test_every_decision_logs_its_candidates_with_their_propensities(learning: Decisioning) -> None:
    at = touchpoint()
    offers = [await create_offer(learning, f"o{i}", priority=30 - i, touchpoints=[at]) for i in range(3)]
    answer = await learning.stub.Decide(d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at, limit=2))
    logged = (await learning.stub.GetDecision(d.GetDecisionRequest(decision_id=answer.decision_id))).decision
    assert logged.policy == "priority" and logged.touchpoint == at
    by_offer = {c.offer_id: c for c in logged.candidates}
    assert list(by_offer) == [o.id for o in offers]
    assert [(c.rank, c.chosen, c.propensity, c.rank_propensity, c.score) for c in logged.candidates] == [
        (1, True, 1.0, 1.0, 30.0),
        (2, True, 1.0, 1.0, 29.0),
        (3, False, 0.0, 0.0, 28.0),
    ]
    # Written in the same statement as the decision itself.
    stored = await learning.scalar(
        "SELECT jsonb_array_length(candidates) FROM decisions WHERE id = :id",
        id=uuid.UUID(answer.decision_id),
    )
    assert stored == 3


async def test_outcomes_are_recorded_once_per_id_and_checked(learning: Decisioning) -> None:
    at = touchpoint()
    chosen = await create_offer(learning, "a", priority=9, touchpoints=[at])
    other = await create_offer(learning, "b", priority=1, touchpoints=[at])
    decision = (
        await learning.stub.Decide(d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at))
    ).decision_id
    first = await learning.stub.RecordOutcome(
        _outcome(decision, chosen.id, d.OUTCOME_TYPE_CONVERSION, value=1250, outcome_id="order-1")
    )
    assert first.recorded and first.outcome.value == 1250
    again = await learning.stub.RecordOutcome(
        _outcome(decision, chosen.id, d.OUTCOME_TYPE_CONVERSION, value=1250, outcome_id="order-1")
    )
    assert not again.recorded and again.outcome.occur_time == first.outcome.occur_time
    reused = await _refused(
        learning.stub.RecordOutcome(
            _outcome(decision, chosen.id, d.OUTCOME_TYPE_CONVERSION, value=99, outcome_id="order-1")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert reused.error_info.reason == "OUTCOME_ID_REUSED"  # type: ignore[attr-defined]
    counted = await learning.rows(
        "SELECT conversions, value FROM outcome_counts WHERE offer_id = :o AND touchpoint = :t",
        o=uuid.UUID(chosen.id),
        t=at,
    )
    assert [tuple(r) for r in counted] == [(1, 1250.0)]
    missing = await _refused(
        learning.stub.RecordOutcome(_outcome(str(uuid.uuid4()), chosen.id, d.OUTCOME_TYPE_CLICK)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.error_info.reason == "DECISION_NOT_FOUND"  # type: ignore[attr-defined]
    not_chosen = await _refused(
        learning.stub.RecordOutcome(_outcome(decision, other.id, d.OUTCOME_TYPE_CLICK)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert not_chosen.error_info.reason == "OFFER_NOT_CHOSEN"  # type: ignore[attr-defined]
    bad = await _refused(
        learning.stub.RecordOutcome(
            d.RecordOutcomeRequest(
                outcome=d.Outcome(outcome_id="x" * 129, decision_id="nope", offer_id=chosen.id, value=5)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad.fields == {  # type: ignore[attr-defined]
        "outcome.outcome_id",
        "outcome.decision_id",
        "outcome.type",
        "outcome.value",
    }
    logged = (await learning.stub.GetDecision(d.GetDecisionRequest(decision_id=decision))).decision
    assert [(o.outcome_id, o.type) for o in logged.outcomes] == [("order-1", d.OUTCOME_TYPE_CONVERSION)]


async def test_thompson_sampling_shifts_decisions_to_the_offer_that_converts_three_times_more(
    learning: Decisioning,
) -> None:
    at = touchpoint()
    a = await create_offer(learning, "a", priority=1, touchpoints=[at])
    b = await create_offer(learning, "b", priority=1, touchpoints=[at])
    rates = {a.id: 0.06, b.id: 0.18}
    await learning.stub.SetLearningPolicy(
        d.SetLearningPolicyRequest(
            policy=d.LearningPolicy(
                touchpoint=at, enabled=True, exploration=0.1, success=d.OUTCOME_TYPE_CONVERSION
            )
        )
    )
    rng = random.Random(5)
    chosen: list[str] = []
    propensity_of_b: list[float] = []

    async def one() -> None:
        answer = await learning.stub.Decide(d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at))
        offer = answer.actions[0].offer_id
        chosen.append(offer)
        await learning.stub.RecordOutcome(_outcome(answer.decision_id, offer, d.OUTCOME_TYPE_IMPRESSION))
        if rng.random() < rates[offer]:
            await learning.stub.RecordOutcome(
                _outcome(answer.decision_id, offer, d.OUTCOME_TYPE_CONVERSION, value=1)
            )
        if len(chosen) > 400:
            logged = (
                await learning.stub.GetDecision(d.GetDecisionRequest(decision_id=answer.decision_id))
            ).decision
            propensity_of_b.append(next(c.propensity for c in logged.candidates if c.offer_id == b.id))

    for _ in range(30):
        await asyncio.gather(*(one() for _ in range(20)))
    late = chosen[-200:]
    share_b = late.count(b.id) / len(late)
    assert share_b >= 0.8, share_b
    # Exploration continues: the worse offer is still chosen now and then.
    assert late.count(a.id) > 0
    # What the log says the policy's chance of b was is what happened.
    assert abs(sum(propensity_of_b) / len(propensity_of_b) - share_b) < 0.1
    # The log the bandit left is good for off-policy evaluation: "always b" and "always a" are estimated
    # from it (the logged propensities moved as the posteriors did; each action is weighed by its own).
    values = {}
    for first_choice, rate in ((b.id, rates[b.id]), (a.id, rates[a.id])):
        others = [offer for offer in rates if offer != first_choice]
        evaluated = await learning.stub.EvaluatePolicy(
            d.EvaluatePolicyRequest(
                touchpoint=at,
                ranking=d.RankingPolicy(offer_ids=[first_choice, *others]),
                metric=d.EVALUATION_METRIC_CONVERSION,
                seed=2,
            )
        )
        assert evaluated.logged_actions == 600
        # (The simulated conversions are random and the calls concurrent, so the realised rates vary: the
        # estimate is held to 0.1, about three standard errors of a, which the log shows rarely.)
        for estimate in evaluated.estimates[1:]:  # SNIPW and DR
            assert abs(estimate.value - rate) < 0.1, (first_choice == b.id, estimate)
            assert estimate.ci_low <= estimate.value <= estimate.ci_high
        values[first_choice] = evaluated.estimates[1].value
    assert values[b.id] > values[a.id]
    # The answer carries P·C·V·L and the chance the policy gave the chosen offer; explain agrees with it.
    answer = await learning.stub.Decide(
        d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at, limit=2, explain=True)
    )
    first = answer.actions[0]
    assert 0 < first.propensity < 1 and (first.context_weight, first.value, first.lever) == (1, 1, 1)
    assert first.score == pytest.approx(first.propensity * first.context_weight * first.value * first.lever)
    assert 0 < first.selection_probability <= 1
    mine = {e.offer_id: e for e in answer.explanations if e.offer_id in rates}
    assert [(mine[a.offer_id].verdict, mine[a.offer_id].rank) for a in answer.actions] == [
        (d.Explanation.VERDICT_CHOSEN, 1),
        (d.Explanation.VERDICT_CHOSEN, 2),
    ]
    assert mine[first.offer_id].score == pytest.approx(first.score)


async def test_evaluate_policy_on_an_imported_uniform_log_finds_the_best_offers_value(
    learning: Decisioning,
) -> None:
    at = touchpoint()
    offers = [await create_offer(learning, f"arm{i}", priority=1, touchpoints=[at]) for i in range(4)]
    rates = [0.05, 0.1, 0.2, 0.4]
    rng = random.Random(3)
    decisions = []
    clicks = []
    for _ in range(2_000):
        shown = rng.randrange(4)
        decision_id = str(uuid.uuid4())
        decisions.append(
            d.LoggedDecision(
                decision_id=decision_id,
                person_id=str(uuid.uuid4()),
                touchpoint=at,
                policy="uniform",
                candidates=[
                    d.Candidate(
                        offer_id=o.id,
                        rank=1 if k == shown else 0,
                        propensity=0.25,
                        rank_propensity=0.25 if k == shown else 0.0,
                        chosen=k == shown,
                    )
                    for k, o in enumerate(offers)
                ],
            )
        )
        if rng.random() < rates[shown]:
            clicks.append((decision_id, offers[shown].id))
    imported = 0
    for start in range(0, len(decisions), 1000):
        imported += (
            await learning.stub.ImportDecisions(
                d.ImportDecisionsRequest(decisions=decisions[start : start + 1000])
            )
        ).imported
    assert imported == 2_000
    again = await learning.stub.ImportDecisions(d.ImportDecisionsRequest(decisions=decisions[:10]))
    assert again.imported == 0
    for start in range(0, len(clicks), 50):
        await asyncio.gather(
            *(
                learning.stub.RecordOutcome(_outcome(i, o, d.OUTCOME_TYPE_CLICK))
                for i, o in clicks[start : start + 50]
            )
        )

    best_first = d.RankingPolicy(offer_ids=[o.id for o in reversed(offers)])
    answer = await learning.stub.EvaluatePolicy(
        d.EvaluatePolicyRequest(touchpoint=at, ranking=best_first, seed=1)
    )
    assert [e.estimator for e in answer.estimates] == ["ipw", "snipw", "dr"]
    assert answer.logged_actions == 2_000
    assert 300 < answer.effective_sample_size < 700  # a quarter of the log agrees with the candidate
    for e in answer.estimates:
        assert e.ci_low <= 0.4 <= e.ci_high, e
        assert abs(e.value - 0.4) < 0.1, e
    assert abs(answer.logged_value - sum(rates) / 4) < 0.05
    # A Thompson candidate sure of the best arm is worth about as much.
    sure = d.ThompsonPolicy(
        arms=[
            d.BetaArm(offer_id=o.id, alpha=1 + 1000 * r, beta=1 + 1000 * (1 - r))
            for o, r in zip(offers, rates, strict=True)
        ],
        draws=20_000,
    )
    thompson = await learning.stub.EvaluatePolicy(
        d.EvaluatePolicyRequest(touchpoint=at, thompson=sure, seed=1)
    )
    assert abs(thompson.estimates[1].value - answer.estimates[1].value) < 0.02


async def test_evaluate_policy_refuses_a_candidate_the_log_does_not_cover(learning: Decisioning) -> None:
    at = touchpoint()
    offers = [await create_offer(learning, f"p{i}", priority=10 - i, touchpoints=[at]) for i in range(3)]
    for _ in range(5):
        await learning.stub.Decide(d.DecideRequest(person_id=str(uuid.uuid4()), touchpoint=at))
    # By priority, only the first offer was ever possible: a candidate preferring the last is not covered.
    reversed_ranking = d.RankingPolicy(offer_ids=[o.id for o in reversed(offers)])
    refused = await _refused(
        learning.stub.EvaluatePolicy(d.EvaluatePolicyRequest(touchpoint=at, ranking=reversed_ranking)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert refused.error_info.reason == "PROPENSITY_NOT_COVERED"  # type: ignore[attr-defined]
    assert refused.error_info.metadata["offer_id"] == offers[2].id  # type: ignore[attr-defined]
    # The logging policy itself is covered (and was worth nothing: no outcomes).
    same = d.RankingPolicy(offer_ids=[o.id for o in offers])
    answer = await learning.stub.EvaluatePolicy(d.EvaluatePolicyRequest(touchpoint=at, ranking=same))
    assert answer.logged_actions == 5 and answer.estimates[0].value == 0.0
    empty = await _refused(
        learning.stub.EvaluatePolicy(d.EvaluatePolicyRequest(touchpoint=touchpoint(), ranking=same)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert empty.error_info.reason == "NO_LOGGED_DECISIONS"  # type: ignore[attr-defined]


async def test_bad_learning_requests_name_every_bad_field(learning: Decisioning) -> None:
    offer = str(uuid.uuid4())
    evaluate = await _refused(
        learning.stub.EvaluatePolicy(
            d.EvaluatePolicyRequest(
                touchpoint="",
                ranking=d.RankingPolicy(offer_ids=[offer, offer, "nope"]),
                bootstrap_samples=10,
                max_uncovered=2,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert evaluate.fields == {  # type: ignore[attr-defined]
        "touchpoint",
        "ranking.offer_ids[1]",
        "ranking.offer_ids[2]",
        "bootstrap_samples",
        "max_uncovered",
    }
    no_candidate = await _refused(
        learning.stub.EvaluatePolicy(d.EvaluatePolicyRequest(touchpoint="t")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert no_candidate.fields  # type: ignore[attr-defined]
    policy = await _refused(
        learning.stub.SetLearningPolicy(
            d.SetLearningPolicyRequest(
                policy=d.LearningPolicy(
                    touchpoint="t\x00",
                    exploration=1.5,
                    success=d.OUTCOME_TYPE_IMPRESSION,
                    offers=[d.OfferLearning(offer_id=offer), d.OfferLearning(offer_id=offer, value=-1)],
                )
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert policy.fields == {  # type: ignore[attr-defined]
        "policy.touchpoint",
        "policy.exploration",
        "policy.success",
        "policy.offers[1]",
        "policy.offers[1].value",
    }
    chosen = d.Candidate(offer_id=offer, rank=1, propensity=0.1, rank_propensity=0.5, chosen=True)
    imported = await _refused(
        learning.stub.ImportDecisions(
            d.ImportDecisionsRequest(
                decisions=[
                    d.LoggedDecision(
                        decision_id=str(uuid.uuid4()),
                        person_id=str(uuid.uuid4()),
                        touchpoint="t",
                        candidates=[chosen, chosen],
                    ),
                    d.LoggedDecision(
                        decision_id=str(uuid.uuid4()),
                        person_id=str(uuid.uuid4()),
                        touchpoint="t",
                        candidates=[d.Candidate(offer_id=offer, propensity=0.5)],
                    ),
                ]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert imported.fields == {  # type: ignore[attr-defined]
        "decisions[0].candidates[1]",
        "decisions[0].candidates[0].propensity",
        "decisions[0].candidates[1].propensity",
        "decisions[0].candidates[1].rank",
        "decisions[1].candidates",
    }


async def test_forgetting_a_person_deletes_the_outcomes_of_their_decisions(learning: Decisioning) -> None:
    at = touchpoint()
    offer = await create_offer(learning, "o", priority=1, touchpoints=[at])
    person, other = uuid.uuid4(), uuid.uuid4()
    decisions = {}
    for who in (person, other):
        decision = (
            await learning.stub.Decide(d.DecideRequest(person_id=str(who), touchpoint=at))
        ).decision_id
        await learning.stub.RecordOutcome(_outcome(decision, offer.id, d.OUTCOME_TYPE_CLICK))
        decisions[who] = uuid.UUID(decision)

    await processed(learning, await forget(learning, person))

    count = "SELECT count(*) FROM outcomes WHERE decision_id = :d"
    assert await learning.scalar(count, d=decisions[person]) == 0
    assert await learning.scalar(count, d=decisions[other]) == 1
