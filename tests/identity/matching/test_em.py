"""EM recovers known Fellegi-Sunter parameters from synthetic comparison vectors (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from omni_identity.matching.comparison import MISSING
from omni_identity.matching.em import estimate, level_frequencies

TRUE_M = [np.array([0.85, 0.10, 0.05]), np.array([0.90, 0.10]), np.array([0.70, 0.20, 0.05, 0.05])]
TRUE_U = [np.array([0.05, 0.15, 0.80]), np.array([0.30, 0.70]), np.array([0.02, 0.03, 0.15, 0.80])]
LEVELS = [3, 2, 4]
PRIOR = 0.12


def synthetic(n: int, seed: int, missing: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Comparison vectors drawn from the true model, with some fields missing at random; and the truth."""
    rng = np.random.default_rng(seed)
    is_match = rng.random(n) < PRIOR
    vectors = np.empty((n, len(LEVELS)), dtype=np.int8)
    for f, levels in enumerate(LEVELS):
        vectors[is_match, f] = rng.choice(levels, size=int(is_match.sum()), p=TRUE_M[f])
        vectors[~is_match, f] = rng.choice(levels, size=int((~is_match).sum()), p=TRUE_U[f])
        vectors[rng.random(n) < missing, f] = MISSING
    return vectors, is_match


def test_em_recovers_m_u_and_the_prior() -> None:
    vectors, _ = synthetic(60_000, seed=7)
    start_m = [np.full(k, 1.0 / k) + np.eye(k)[0] for k in LEVELS]
    start_m = [m / m.sum() for m in start_m]
    start_u = [np.full(k, 1.0 / k) + np.eye(k)[-1] for k in LEVELS]
    start_u = [u / u.sum() for u in start_u]
    result = estimate(vectors, LEVELS, m=start_m, u=start_u, prior=0.3)
    assert result.converged
    assert result.prior == pytest.approx(PRIOR, abs=0.01)
    for f in range(len(LEVELS)):
        np.testing.assert_allclose(result.m[f], TRUE_M[f], atol=0.03)
        np.testing.assert_allclose(result.u[f], TRUE_U[f], atol=0.01)


def test_em_with_u_fixed_from_random_pairs_learns_m() -> None:
    vectors, is_match = synthetic(40_000, seed=11)
    # Random pairs are almost all non-matches: their level frequencies are u.
    u = level_frequencies(vectors[~is_match][:5000], LEVELS, TRUE_U)
    result = estimate(vectors, LEVELS, m=[np.full(k, 1.0 / k) for k in LEVELS], u=u, prior=0.5, fix_u=True)
    for f in range(len(LEVELS)):
        np.testing.assert_allclose(result.u[f], u[f])
        np.testing.assert_allclose(result.m[f], TRUE_M[f], atol=0.04)


def test_a_field_never_present_keeps_its_starting_values() -> None:
    vectors, _ = synthetic(5_000, seed=3)
    vectors[:, 1] = MISSING
    start_m = [np.array([0.6, 0.3, 0.1]), np.array([0.9, 0.1]), np.array([0.4, 0.3, 0.2, 0.1])]
    start_u = [np.array([0.1, 0.2, 0.7]), np.array([0.2, 0.8]), np.array([0.1, 0.1, 0.2, 0.6])]
    result = estimate(vectors, LEVELS, m=start_m, u=start_u, prior=0.2)
    np.testing.assert_allclose(result.m[1], [0.9, 0.1])
    np.testing.assert_allclose(result.u[1], [0.2, 0.8])


def test_level_frequencies_fall_back_for_absent_fields() -> None:
    vectors = np.array([[0, MISSING], [1, MISSING], [1, MISSING]], dtype=np.int8)
    frequencies = level_frequencies(vectors, [2, 2], [np.array([0.5, 0.5]), np.array([0.01, 0.99])])
    np.testing.assert_allclose(frequencies[0], [1 / 3, 2 / 3], atol=0.01)
    np.testing.assert_allclose(frequencies[1], [0.01, 0.99])


def test_em_needs_vectors() -> None:
    with pytest.raises(ValueError):
        estimate(np.empty((0, 3), dtype=np.int8), LEVELS, m=TRUE_M, u=TRUE_U, prior=0.1)
