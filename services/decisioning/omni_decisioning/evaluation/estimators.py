"""Off-policy estimators: the value a candidate policy would have had, from actions logged by another.

Each logged action i (one offer shown at one place of one decision) has a reward y_i, the probability p_i
with which the logging policy put that offer at that place, and the probability π_i with which the
candidate would have. Its importance weight is w_i = π_i / p_i. With q(a, r) a reward model (the expected
reward of offer a at place r) and D_i = Σ_a π(a at place r_i) q(a, r_i) its value under the candidate:

- IPW (inverse propensity weighting):       V = Σ w_i y_i / n                 unbiased; variance grows with w
- SNIPW (self-normalised IPW):               V = Σ w_i y_i / Σ w_i             slightly biased, far steadier
- DR (doubly robust):                        V = Σ (D_i + w_i (y_i - q_i)) / n  unbiased if either p or q is right

The 95% intervals are percentile bootstrap intervals: decisions (not actions: the places of one decision are
not independent) are drawn with replacement, the estimate recomputed, and the 2.5th and 97.5th percentiles
taken. The effective sample size (Σw)² / Σw² says how many logged actions the estimate is really worth: far
below n means the candidate goes where the log rarely went, and the estimate leans on few actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Decisions resampled per chunk of the bootstrap: bounds memory at chunk x decisions counts.
_CHUNK = 100


@dataclass(frozen=True)
class LoggedActions:
    """The logged actions an evaluation uses, as arrays of equal length."""

    decision: NDArray[np.intp]
    """The index (0..decisions-1) of the decision each action belongs to."""
    weight: FloatArray
    """π_i / p_i."""
    reward: FloatArray
    direct: FloatArray
    """D_i: the reward model's value of the candidate's choice at the action's place."""
    modelled: FloatArray
    """q_i: the reward model's value of the logged action."""


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its bootstrap 95% interval."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Evaluation:
    """The three estimates, the effective sample size and the logging policy's own value."""

    estimates: list[Estimate]
    actions: int
    effective_sample_size: float
    logged_value: float


def ipw(weight: FloatArray, reward: FloatArray) -> float:
    """Inverse propensity weighting."""
    return float(np.mean(weight * reward)) if len(weight) else 0.0


def snipw(weight: FloatArray, reward: FloatArray) -> float:
    """Self-normalised inverse propensity weighting (0 when no weight is positive)."""
    total = float(np.sum(weight))
    return float(np.sum(weight * reward)) / total if total > 0 else 0.0


def doubly_robust(weight: FloatArray, reward: FloatArray, direct: FloatArray, modelled: FloatArray) -> float:
    """The doubly robust estimate: the reward model's value, corrected by the weighted residuals."""
    return float(np.mean(direct + weight * (reward - modelled))) if len(weight) else 0.0


def effective_sample_size(weight: FloatArray) -> float:
    """(Σw)² / Σw²: n for weights all equal, less the more they vary."""
    squares = float(np.sum(weight * weight))
    return float(np.sum(weight)) ** 2 / squares if squares > 0 else 0.0


def evaluate(logged: LoggedActions, *, bootstrap: int, rng: np.random.Generator) -> Evaluation:
    """IPW, SNIPW and DR with percentile-bootstrap 95% intervals over decisions."""
    w, y, d, q = logged.weight, logged.reward, logged.direct, logged.modelled
    values = {
        "ipw": ipw(w, y),
        "snipw": snipw(w, y),
        "dr": doubly_robust(w, y, d, q),
    }
    decisions = int(logged.decision.max()) + 1 if len(w) else 0
    # Per-decision sums: a bootstrap sample is a vector of how often each decision was drawn.
    per = np.zeros((4, decisions))
    for row, values_of in enumerate((np.ones_like(w), w, w * y, d + w * (y - q))):
        per[row] = np.bincount(logged.decision, weights=values_of, minlength=decisions)
    samples = np.empty((3, 0))
    if decisions > 1 and bootstrap > 0:
        chunks = []
        for start in range(0, bootstrap, _CHUNK):
            size = min(_CHUNK, bootstrap - start)
            drawn = rng.integers(0, decisions, size=(size, decisions))
            n, sw, swy, sdr = (per[row][drawn].sum(axis=1) for row in range(4))
            chunks.append(
                np.vstack([swy / n, np.divide(swy, sw, out=np.zeros_like(swy), where=sw > 0), sdr / n])
            )
        samples = np.hstack(chunks)
    estimates = []
    for row, (name, value) in enumerate(values.items()):
        if samples.shape[1]:
            low, high = np.percentile(samples[row], [2.5, 97.5])
        else:
            low = high = value
        estimates.append(Estimate(name, value, float(low), float(high)))
    return Evaluation(
        estimates=estimates,
        actions=len(w),
        effective_sample_size=effective_sample_size(w),
        logged_value=float(np.mean(y)) if len(y) else 0.0,
    )
