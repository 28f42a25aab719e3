"""Expectation-maximisation of the Fellegi-Sunter parameters from unlabelled comparison vectors.

The pairs are a mixture of matches and non-matches whose fields are independent within each class. EM
alternates: E, the probability that each pair is a match under the current m, u and prior; M, m, u and
prior re-estimated as those probabilities' weighted level frequencies. Identical vectors are counted once
with a multiplicity, so an iteration costs the number of distinct vectors, not of pairs. Missing fields
leave both the likelihood and the level counts of their field untouched.

u is best started from random pairs, which are almost all non-matches; m from rough guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from omni_identity.matching.comparison import MISSING

Array = npt.NDArray[np.float64]

_FLOOR = 1e-6
# A little pseudo-count on every level keeps a level that no pair shows from getting probability 0.
_PSEUDO_COUNT = 0.01


@dataclass(frozen=True)
class EmResult:
    """Estimated parameters, how many iterations it took and whether it converged."""

    prior: float
    m: list[Array]
    u: list[Array]
    iterations: int
    converged: bool
    log_likelihood: float


def level_frequencies(
    vectors: npt.NDArray[np.int8],
    n_levels: Sequence[int],
    fallback: Sequence[Array],
    *,
    pseudo_count: float = _PSEUDO_COUNT,
) -> list[Array]:
    """Each field's level frequencies among the pairs where it is present (u from random pairs).

    A field present in no pair gets its fallback. pseudo_count is added to every level's count, so that a
    level no pair showed is rare rather than impossible.
    """
    result = []
    for f, levels in enumerate(n_levels):
        column = vectors[:, f]
        observed = column[column != MISSING]
        if observed.size == 0:
            result.append(np.asarray(fallback[f], dtype=np.float64))
            continue
        counts = np.bincount(observed, minlength=levels).astype(np.float64) + pseudo_count
        result.append(counts / counts.sum())
    return result


def estimate(
    vectors: npt.NDArray[np.int8],
    n_levels: Sequence[int],
    *,
    m: Sequence[Array],
    u: Sequence[Array],
    prior: float,
    max_iterations: int = 200,
    tolerance: float = 1e-7,
    fix_u: bool = False,
) -> EmResult:
    """Run EM from the given starting point until the parameters move less than tolerance.

    With fix_u the u probabilities are kept as given (for instance estimated from random pairs).
    """
    if len(vectors) == 0:
        raise ValueError("EM needs at least one comparison vector")
    patterns, counts = np.unique(vectors, axis=0, return_counts=True)
    weights = counts.astype(np.float64)
    n_fields = patterns.shape[1]
    present = patterns != MISSING
    # One-hot of each pattern's level per field: indicators[f] has shape (n_patterns, levels of f).
    indicators = [
        (patterns[:, f, None] == np.arange(n_levels[f])[None, :]).astype(np.float64) for f in range(n_fields)
    ]
    m_est = [np.asarray(x, dtype=np.float64).copy() for x in m]
    u_est = [np.asarray(x, dtype=np.float64).copy() for x in u]
    lam = float(prior)
    converged = False
    iteration = 0
    log_likelihood = float("nan")
    for iteration in range(1, max_iterations + 1):  # noqa: B007  (the count is reported)
        log_m = _log_likelihood(indicators, m_est)
        log_u = _log_likelihood(indicators, u_est)
        a = np.log(lam) + log_m
        b = np.log1p(-lam) + log_u
        top = np.maximum(a, b)
        log_total = top + np.log(np.exp(a - top) + np.exp(b - top))
        g = np.exp(a - log_total)
        log_likelihood = float((weights * log_total).sum())
        matched = weights * g
        unmatched = weights * (1.0 - g)
        new_lam = float(np.clip(matched.sum() / weights.sum(), _FLOOR, 1 - _FLOOR))
        new_m = [_m_step(indicators[f], present[:, f], matched, m_est[f]) for f in range(n_fields)]
        new_u = (
            u_est
            if fix_u
            else [_m_step(indicators[f], present[:, f], unmatched, u_est[f]) for f in range(n_fields)]
        )
        change = max(
            abs(new_lam - lam),
            max(float(np.abs(x - y).max()) for x, y in zip(new_m, m_est, strict=True)),
            max(float(np.abs(x - y).max()) for x, y in zip(new_u, u_est, strict=True)),
        )
        lam, m_est, u_est = new_lam, new_m, new_u
        if change < tolerance:
            converged = True
            break
    return EmResult(lam, m_est, u_est, iteration, converged, log_likelihood)


def prior_given(
    vectors: npt.NDArray[np.int8],
    m: Sequence[Array],
    u: Sequence[Array],
    *,
    start: float = 0.1,
    max_iterations: int = 500,
    tolerance: float = 1e-9,
) -> float:
    """The share of matches among the pairs (EM over the prior alone, m and u fixed)."""
    if len(vectors) == 0:
        raise ValueError("EM needs at least one comparison vector")
    patterns, counts = np.unique(vectors, axis=0, return_counts=True)
    weights = counts.astype(np.float64)
    indicators = [
        (patterns[:, f, None] == np.arange(len(m[f]))[None, :]).astype(np.float64)
        for f in range(patterns.shape[1])
    ]
    log_ratio = _log_likelihood(indicators, list(m)) - _log_likelihood(indicators, list(u))
    lam = float(start)
    for _ in range(max_iterations):
        odds = np.log(lam) - np.log1p(-lam) + log_ratio
        g = 1.0 / (1.0 + np.exp(-np.clip(odds, -700, 700)))
        new_lam = float(np.clip((weights * g).sum() / weights.sum(), _FLOOR * 1e-3, 1 - _FLOOR))
        if abs(new_lam - lam) < tolerance:
            return new_lam
        lam = new_lam
    return lam


def _log_likelihood(indicators: list[Array], probabilities: list[Array]) -> Array:
    """log P(pattern | class), summed over the present fields (absent fields have all-zero indicators)."""
    total = np.zeros(indicators[0].shape[0])
    for one_hot, p in zip(indicators, probabilities, strict=True):
        total += one_hot @ np.log(np.clip(p, _FLOOR, 1.0))
    return total


def _m_step(one_hot: Array, present: npt.NDArray[np.bool_], responsibility: Array, previous: Array) -> Array:
    observed = responsibility[present]
    if observed.sum() < 1.0:
        # Fewer than one pair's worth of evidence: nothing to learn, keep what we had.
        return previous
    counts = observed @ one_hot[present] + _PSEUDO_COUNT
    return np.asarray(np.clip(counts / counts.sum(), _FLOOR, 1.0), dtype=np.float64)
