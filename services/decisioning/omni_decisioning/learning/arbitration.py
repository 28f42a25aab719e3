"""Learned arbitration for Decide: which eligible offers a person gets at a touchpoint, with the probability
the deciding policy gave each, for the decision log.

Without a learning policy at the touchpoint (or with one switched off), arbitration is by priority as in
omni_decisioning.arbitration: deterministic, so the chosen offers have propensity 1 and the others 0. With
one, priority = P·C·V·L: P a draw from the offer's Beta posterior (Thompson sampling), C the touchpoint's
context weight of the offer, V its business value, L its lever (the offer's priority). With the policy's
exploration share the order is uniformly random instead. The logged propensity of each offer at each place is
the exact mixture of the two: exploration / n + (1 - exploration) x the Thompson probability, the latter a
Monte Carlo estimate (learning/thompson.py) kept per set of posteriors and weights of the eligible offers.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from omni_decisioning.arbitration import Explained, Verdict
from omni_decisioning.arbitration import score as priority_score
from omni_decisioning.entities import Action, LoggedCandidate, Offer
from omni_decisioning.learning import decision_log
from omni_decisioning.learning.policy import Counts, LearningPolicy
from omni_decisioning.learning.thompson import FloatArray, place_probabilities, with_exploration

# The cache of place probabilities holds at most this many sets of eligible offers (cleared when full).
_MAX_CACHED_SETS = 4096


def eligible(ranked_offers: Iterable[Offer], segment_ids: Set[uuid.UUID], now: datetime) -> list[Offer]:
    """The offers (already ranked for a touchpoint) the person may get now: in the offer's segment if it
    names one, inside its validity window. The same rules as arbitration.choose, without its limit."""
    return [
        offer
        for offer in ranked_offers
        if offer.valid_at(now) and (offer.segment_id is None or offer.segment_id in segment_ids)
    ]


@dataclass(frozen=True)
class Choice:
    """What arbitration chose, with every eligible offer as the decision log keeps it."""

    actions: list[Action]
    candidates: tuple[LoggedCandidate, ...]
    policy: str
    candidates_json: str = ""
    """The candidates as the decision log stores them."""


@dataclass
class LearnedModel:
    """The learning policies and outcome counts, in memory, as of a version and a time of loading."""

    version: int = -1
    loaded_at: float = 0.0
    policies: dict[str, LearningPolicy] = field(default_factory=dict)
    counts: dict[tuple[uuid.UUID, str], Counts] = field(default_factory=dict)


class Arbiter:
    """Chooses among the eligible offers by priority, or by Thompson sampling where a touchpoint learns."""

    def __init__(self, *, draws: int = 2000, refresh_s: float = 1.0, seed: int | None = None) -> None:
        self._draws = draws
        self._refresh_s = refresh_s
        self._rng = np.random.default_rng(seed)
        self.model = LearnedModel()
        self._places: dict[tuple[bytes, int, float], FloatArray] = {}
        self._priority: dict[tuple[tuple[int, ...], int], Choice] = {}
        self._priority_catalog = 0

    def stale(self, version: int) -> bool:
        """Whether the model must be reloaded: a policy changed, or the counts are older than refresh_s."""
        return version != self.model.version or (
            bool(self.model.policies) and time.monotonic() - self.model.loaded_at >= self._refresh_s
        )

    def replace(self, model: LearnedModel) -> None:
        """Use a freshly loaded model."""
        self.model = model

    def choose(
        self,
        ranked_offers: Iterable[Offer],
        segment_ids: Set[uuid.UUID],
        *,
        touchpoint: str,
        limit: int,
        now: datetime,
        catalog: int = 0,
    ) -> Choice:
        """The `limit` offers for the person, and every eligible offer with its propensity. `catalog` is the
        version of the offer catalogue `ranked_offers` come from (the offers stay the same objects while it
        does)."""
        offers = eligible(ranked_offers, segment_ids, now)
        policy = self.model.policies.get(touchpoint)
        if policy is None or not policy.enabled or not offers:
            # By priority the choice and its log entry follow from the eligible offers alone: made once.
            if catalog != self._priority_catalog or len(self._priority) >= _MAX_CACHED_SETS:
                self._priority, self._priority_catalog = {}, catalog
            key = (tuple(map(id, offers)), limit)
            found = self._priority.get(key)
            if found is None:
                found = self._priority[key] = _by_priority(offers, limit)
            return found
        return self._by_thompson(offers, policy, limit)

    def _by_thompson(self, offers: list[Offer], policy: LearningPolicy, limit: int) -> Choice:
        alpha, beta, (context, value, lever) = self.arms(offers, policy)
        weights = context * value * lever
        places = min(limit, len(offers))
        # The probabilities depend only on the posteriors, weights and exploration: kept across reloads of
        # the model for as long as those stay the same.
        key = (alpha.tobytes() + beta.tobytes() + weights.tobytes(), places, policy.exploration)
        probabilities = self._places.get(key)
        if probabilities is None:
            if len(self._places) >= _MAX_CACHED_SETS:
                self._places.clear()
            probabilities = self._places[key] = with_exploration(
                place_probabilities(alpha, beta, weights, places=places, draws=self._draws, rng=self._rng),
                policy.exploration,
            )
        theta = self._rng.beta(alpha, beta)
        scores = weights * theta
        if policy.exploration > 0 and self._rng.random() < policy.exploration:
            order = self._rng.permutation(len(offers))
        else:
            order = np.argsort(-scores, kind="stable")
        rank_of = {int(index): rank for rank, index in enumerate(order, start=1)}
        floor = 1.0 / (self._draws + 1)
        candidates = []
        for index, offer in enumerate(offers):
            rank = rank_of[index]
            chosen = rank <= places
            candidates.append(
                LoggedCandidate(
                    offer_id=offer.id,
                    score=float(scores[index]),
                    rank=rank,
                    propensity=min(1.0, float(probabilities[index].sum())),
                    # A chosen offer had a chance: an estimate of 0 only means the draws missed it.
                    rank_propensity=max(float(probabilities[index, rank - 1]), floor) if chosen else 0.0,
                    chosen=chosen,
                )
            )
        actions = [
            Action(
                offer=offers[i],
                score=float(scores[i]),
                factors=(float(theta[i]), float(context[i]), float(value[i]), float(lever[i])),
                probability=candidates[i].rank_propensity,
            )
            for i in (int(i) for i in order[:places])
        ]
        return Choice(
            actions=actions,
            candidates=tuple(candidates),
            policy="thompson",
            candidates_json=decision_log.to_json(candidates),
        )

    def arms(
        self, offers: list[Offer], policy: LearningPolicy
    ) -> tuple[FloatArray, FloatArray, tuple[FloatArray, FloatArray, FloatArray]]:
        """Each offer's posterior (alpha, beta) and its C, V and L at the policy's touchpoint."""
        n = len(offers)
        alpha, beta = np.empty(n), np.empty(n)
        context, value, lever = np.empty(n), np.empty(n), np.empty(n)
        for index, offer in enumerate(offers):
            prior_alpha, prior_beta, value[index], context[index], fixed = policy.terms(offer.id)
            lever[index] = priority_score(offer)
            if fixed:
                # A Beta this narrow draws its mean every time (to 1e-6): P is the prior's mean.
                mean = prior_alpha / (prior_alpha + prior_beta)
                alpha[index], beta[index] = mean * _FIXED, (1.0 - mean) * _FIXED
                continue
            counts = self.model.counts.get((offer.id, policy.touchpoint), _NONE)
            successes, trials = counts.successes(policy.success), counts.trials(policy.success)
            alpha[index] = prior_alpha + successes
            beta[index] = prior_beta + (trials - successes)
        return alpha, beta, (context, value, lever)


_NONE = Counts()
# The pseudo-count of a fixed offer's Beta.
_FIXED = 1e12


def _by_priority(offers: list[Offer], limit: int) -> Choice:
    candidates = tuple(
        LoggedCandidate(
            offer_id=offer.id,
            score=priority_score(offer),
            rank=rank,
            propensity=1.0 if rank <= limit else 0.0,
            rank_propensity=1.0 if rank <= limit else 0.0,
            chosen=rank <= limit,
        )
        for rank, offer in enumerate(offers, start=1)
    )
    actions = [Action(offer=offer, score=priority_score(offer)) for offer in offers[:limit]]
    return Choice(
        actions=actions,
        candidates=candidates,
        policy="priority",
        candidates_json=decision_log.to_json(candidates),
    )


def explain_learned(explained: list[Explained], choice: Choice) -> list[Explained]:
    """Explanations (arbitration.explain, which ranks by priority) corrected for a learned choice: the
    eligible offers get their sampled score, their rank in this decision and their chance of being chosen,
    in the order the draw ranked them, in the places the eligible offers held."""
    logged = {candidate.offer_id: candidate for candidate in choice.candidates}
    places = [i for i, item in enumerate(explained) if item.offer.id in logged]
    rewritten = []
    for i in places:
        item = explained[i]
        candidate = logged[item.offer.id]
        verdict = Verdict.CHOSEN if candidate.chosen else Verdict.OUTRANKED
        rewritten.append(
            dataclasses.replace(
                item,
                verdict=verdict,
                score=candidate.score,
                rank=candidate.rank,
                detail=f"ranked {candidate.rank} by sampled P·C·V·L {candidate.score:.4g}; chosen with "
                f"probability {candidate.propensity:.0%} under the learning policy",
            )
        )
    rewritten.sort(key=lambda item: item.rank)
    result = list(explained)
    for i, item in zip(places, rewritten, strict=True):
        result[i] = item
    return result
