"""Beta posteriors and Thompson sampling over ranked lists, with the probabilities the sampling policy gives
each item at each place.

Pure numpy, no storage and no offers: anything that chooses among arms with a yes/no reward (offers,
experiment arms, channels) can use it. An arm's posterior is Beta(prior_alpha + successes, prior_beta +
failures). A Thompson draw takes one sample θ from every arm's posterior, multiplies it by the arm's weight
(a positive number: value, context, lever) and ranks the arms by the product. The probability that an arm
lands at place r has no closed form for more than two arms, so `place_probabilities` estimates it by Monte
Carlo draws of the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Draws per chunk of the Monte Carlo estimate: bounds memory at chunk x arms floats.
_CHUNK = 20_000


@dataclass(frozen=True)
class BetaPosterior:
    """A Beta distribution over a success rate."""

    alpha: float
    beta: float

    @classmethod
    def from_counts(
        cls, *, prior_alpha: float, prior_beta: float, successes: float, trials: float
    ) -> BetaPosterior:
        """The posterior after `successes` in `trials` (trials below successes count as successes)."""
        successes = max(successes, 0.0)
        failures = max(trials - successes, 0.0)
        return cls(prior_alpha + successes, prior_beta + failures)

    @property
    def mean(self) -> float:
        """The expected success rate."""
        return self.alpha / (self.alpha + self.beta)


def sample_order(
    alpha: FloatArray, beta: FloatArray, weights: FloatArray, rng: np.random.Generator
) -> tuple[NDArray[np.intp], FloatArray]:
    """One Thompson draw: the arms best first (ties keep the arms' order) and each arm's sampled score
    weight x θ."""
    scores = weights * rng.beta(alpha, beta)
    return np.argsort(-scores, kind="stable"), scores


def place_probabilities(
    alpha: FloatArray,
    beta: FloatArray,
    weights: FloatArray,
    *,
    places: int,
    draws: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Monte Carlo estimate of P(arm i is at place r) under Thompson sampling, for r < places: an
    arms x places matrix whose columns sum to 1 (when there are at least `places` arms)."""
    arms = len(alpha)
    places = min(places, arms)
    counts = np.zeros((arms, places))
    if arms == 0 or places == 0:
        return counts
    done = 0
    while done < draws:
        size = min(_CHUNK, draws - done)
        scores = weights * rng.beta(alpha, beta, size=(size, arms))
        if places < arms:
            top = np.argpartition(-scores, places - 1, axis=1)[:, :places]
            order = np.take_along_axis(
                top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1
            )
        else:
            order = np.argsort(-scores, axis=1)
        for place in range(places):
            counts[:, place] += np.bincount(order[:, place], minlength=arms)
        done += size
    return counts / draws


def with_exploration(probabilities: FloatArray, exploration: float) -> FloatArray:
    """The place probabilities of a policy that, with probability `exploration`, shows the arms in a
    uniformly random order instead (every arm is at every place with probability 1/arms then)."""
    arms = probabilities.shape[0]
    if arms == 0 or exploration <= 0:
        return probabilities
    return exploration / arms + (1.0 - exploration) * probabilities
