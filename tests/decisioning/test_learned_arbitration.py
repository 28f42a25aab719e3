"""Decide's arbiter without the service: by priority (propensities 1 and 0), by Thompson sampling (logged
propensities that match the frequencies the policy actually produces), fixed offers, P·C·V·L."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from omni_decisioning.arbitration import ranked
from omni_decisioning.entities import Offer
from omni_decisioning.learning.arbitration import Arbiter, LearnedModel
from omni_decisioning.learning.policy import Counts, LearningPolicy, OfferTerms

NOW = datetime.now(UTC)


def _offers(priorities: list[int]) -> list[Offer]:
    return ranked(
        [
            Offer(
                name=f"o{i}",
                description="",
                touchpoints=(),
                segment_id=None,
                priority=p,
                id=uuid.uuid4(),
                create_time=NOW,
            )
            for i, p in enumerate(priorities)
        ],
        "web",
    )


def test_by_priority_the_chosen_have_propensity_one_and_the_choice_is_made_once() -> None:
    offers = _offers([5, 4, 3])
    arbiter = Arbiter()
    choice = arbiter.choose(offers, set(), touchpoint="web", limit=2, now=NOW, catalog=7)
    assert choice.policy == "priority"
    assert [(c.rank, c.propensity, c.rank_propensity, c.chosen) for c in choice.candidates] == [
        (1, 1.0, 1.0, True),
        (2, 1.0, 1.0, True),
        (3, 0.0, 0.0, False),
    ]
    assert arbiter.choose(offers, set(), touchpoint="web", limit=2, now=NOW, catalog=7) is choice
    assert arbiter.choose(offers, set(), touchpoint="web", limit=2, now=NOW, catalog=8) is not choice


def test_thompson_logs_the_probabilities_it_actually_chooses_with() -> None:
    offers = _offers([1, 1, 2, 1])
    counts = {
        (offers[0].id, "web"): Counts(impressions=100, clicks=10),
        (offers[1].id, "web"): Counts(impressions=100, clicks=14),
        (offers[2].id, "web"): Counts(impressions=40, clicks=3),
        (offers[3].id, "web"): Counts(impressions=10, clicks=1),
    }
    policy = LearningPolicy("web", enabled=True, exploration=0.2)
    arbiter = Arbiter(draws=50_000, seed=3)
    arbiter.replace(LearnedModel(version=1, policies={"web": policy}, counts=counts))
    seen: Counter[tuple[uuid.UUID, int]] = Counter()
    logged: dict[tuple[uuid.UUID, int], float] = {}
    calls = 6_000
    for _ in range(calls):
        choice = arbiter.choose(offers, set(), touchpoint="web", limit=2, now=NOW)
        assert choice.policy == "thompson"
        for c in choice.candidates:
            if c.chosen:
                seen[(c.offer_id, c.rank)] += 1
                logged[(c.offer_id, c.rank)] = c.rank_propensity
    for key, count in seen.items():
        assert count / calls == pytest.approx(logged[key], abs=0.02), key
    # The scores are P·C·V·L: the lever (priority 2) doubles the third offer's draw.
    action = choice.actions[0]
    assert action.factors is not None
    p, context, value, lever = action.factors
    assert action.score == pytest.approx(p * context * value * lever)


def test_a_fixed_offer_keeps_its_prior_mean() -> None:
    offers = _offers([1, 1])
    policy = LearningPolicy(
        "web",
        enabled=True,
        offers={offers[0].id: OfferTerms(prior_alpha=3, prior_beta=7, fixed=True, value=2)},
    )
    arbiter = Arbiter(draws=2_000, seed=1)
    arbiter.replace(
        LearnedModel(version=1, policies={"web": policy}, counts={(offers[0].id, "web"): Counts(100, 90)})
    )
    for _ in range(50):
        choice = arbiter.choose(offers, set(), touchpoint="web", limit=2, now=NOW)
        fixed = next(a for a in choice.actions if a.offer.id == offers[0].id)
        assert fixed.factors is not None and fixed.factors[0] == pytest.approx(0.3, abs=1e-4)
        assert fixed.score == pytest.approx(0.6, abs=1e-3)
    stored = LearningPolicy.from_json("web", policy.to_json())
    assert stored == policy
