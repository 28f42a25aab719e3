"""Beta posteriors and the place probabilities of Thompson sampling, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from omni_decisioning.learning.thompson import (
    BetaPosterior,
    place_probabilities,
    sample_order,
    with_exploration,
)


def test_a_posterior_adds_successes_and_failures_to_the_prior() -> None:
    posterior = BetaPosterior.from_counts(prior_alpha=1, prior_beta=1, successes=3, trials=10)
    assert (posterior.alpha, posterior.beta) == (4, 8)
    assert posterior.mean == pytest.approx(4 / 12)
    # A success without a recorded trial counts as one.
    assert BetaPosterior.from_counts(prior_alpha=1, prior_beta=1, successes=2, trials=0).beta == 1


def test_two_arms_match_the_closed_form() -> None:
    # X ~ Beta(2, 1) (density 2x) against Y ~ Beta(1, 1): P(X > Y) = ∫ 2x · x dx = 2/3.
    probabilities = place_probabilities(
        np.array([2.0, 1.0]),
        np.array([1.0, 1.0]),
        np.ones(2),
        places=2,
        draws=200_000,
        rng=np.random.default_rng(1),
    )
    assert probabilities[0, 0] == pytest.approx(2 / 3, abs=0.005)
    assert probabilities[1, 1] == pytest.approx(2 / 3, abs=0.005)
    assert np.allclose(probabilities.sum(axis=0), 1)


def test_the_estimate_matches_the_frequency_of_single_draws() -> None:
    rng = np.random.default_rng(2)
    alpha, beta, weights = (
        np.array([3.0, 5.0, 2.0, 8.0]),
        np.array([9.0, 9.0, 4.0, 30.0]),
        np.array([1.0, 1.0, 2.0, 1.5]),
    )
    estimated = place_probabilities(alpha, beta, weights, places=2, draws=100_000, rng=rng)
    counts = np.zeros((4, 2))
    for _ in range(20_000):
        order, _scores = sample_order(alpha, beta, weights, rng)
        counts[order[0], 0] += 1
        counts[order[1], 1] += 1
    assert np.allclose(counts / 20_000, estimated, atol=0.015)


def test_exploration_mixes_in_a_uniform_order() -> None:
    mixed = with_exploration(np.array([[1.0], [0.0]]), 0.2)
    assert mixed[:, 0].tolist() == pytest.approx([0.9, 0.1])
