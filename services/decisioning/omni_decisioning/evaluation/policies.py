"""Candidate policies for off-policy evaluation: for a decision's eligible offers, the probability the
candidate would put each at each place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from omni_decisioning.learning.thompson import FloatArray, place_probabilities


class CandidatePolicy:
    """A policy to evaluate: `places(offers, n)` is an offers x n matrix of P(offer at place r)."""

    name = "candidate"

    def places(self, offers: Sequence[str], places: int) -> FloatArray:
        """P(offer i at place r) for r < places; rows of offers the policy never shows are 0."""
        raise NotImplementedError


def _deterministic(order: list[int], arms: int, places: int) -> FloatArray:
    matrix = np.zeros((arms, places))
    for place, index in enumerate(order[:places]):
        matrix[index, place] = 1.0
    return matrix


@dataclass
class RankingCandidate(CandidatePolicy):
    """The listed offers in a fixed order; offers not listed are never shown."""

    order: Mapping[str, int]
    name = "ranking"

    def places(self, offers: Sequence[str], places: int) -> FloatArray:
        listed = sorted((self.order[o], i) for i, o in enumerate(offers) if o in self.order)
        return _deterministic([i for _, i in listed], len(offers), places)


@dataclass
class WeightsCandidate(CandidatePolicy):
    """Arbitration by a weight per offer (higher first; unlisted offers weigh 0; ties keep the logged order)."""

    weights: Mapping[str, float]
    name = "weights"

    def places(self, offers: Sequence[str], places: int) -> FloatArray:
        order = sorted(range(len(offers)), key=lambda i: -self.weights.get(offers[i], 0.0))
        return _deterministic(order, len(offers), places)


@dataclass
class ThompsonCandidate(CandidatePolicy):
    """Thompson sampling over the listed offers' Beta distributions; unlisted offers are never shown."""

    arms: Mapping[str, tuple[float, float]]
    draws: int
    rng: np.random.Generator
    name = "thompson"
    _cache: dict[tuple[tuple[str, ...], int], FloatArray] = field(default_factory=dict)

    def places(self, offers: Sequence[str], places: int) -> FloatArray:
        key = (tuple(offers), places)
        found = self._cache.get(key)
        if found is not None:
            return found
        listed = [i for i, o in enumerate(offers) if o in self.arms]
        matrix = np.zeros((len(offers), places))
        if listed:
            alpha = np.array([self.arms[offers[i]][0] for i in listed])
            beta = np.array([self.arms[offers[i]][1] for i in listed])
            # Every set of eligible offers gets the same number of draws; many distinct sets cost more.
            estimated = place_probabilities(
                alpha, beta, np.ones(len(listed)), places=places, draws=self.draws, rng=self.rng
            )
            matrix[listed, : estimated.shape[1]] = estimated
        self._cache[key] = matrix
        return matrix
