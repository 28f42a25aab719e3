"""The estimators of experiment results and outcome reports, in plain Python (no SciPy in the lock; the few
distributions needed are a few lines each, and tests check them against published values).

- `wilson`: a 95% interval for a rate (conversions / exposures). Unlike the normal ("Wald") interval it stays
  inside [0, 1] and keeps its coverage for small counts and rates near 0.
- `mean_interval`: a 95% interval for a mean per unit (revenue per exposed person) from n, the sum and the sum
  of squares, by the central limit theorem (the delta method's linear case); sums are what rollups can keep.
- `lift`: the relative difference of a treatment's mean (or rate) from the control's, with a 95% interval by
  the delta method on the ratio of two independent means.
- `sample_ratio_mismatch`: Pearson's chi-square test of the observed exposures per arm against the planned
  allocation: a small p-value (< 0.001) means the assignment or its logging is broken, and no result of the
  experiment should be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% confidence interval."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        """Whether the interval lies wholly above or below value (a 5%-level difference from it)."""
        return self.low > value or self.high < value


def wilson(successes: float, trials: float, z: float = Z95) -> Interval:
    """The Wilson score interval of successes/trials; (0, 0, 1) when there are no trials."""
    if trials <= 0:
        return Interval(0.0, 0.0, 1.0)
    p = min(max(successes / trials, 0.0), 1.0)
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Moments:
    """What a mean's interval needs: the count of units, the sum and the sum of squares of their values."""

    n: float
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        """The mean per unit (0 without units)."""
        return self.total / self.n if self.n > 0 else 0.0

    @property
    def variance_of_mean(self) -> float:
        """The estimated variance of the mean: the sample variance over n (infinite below two units)."""
        if self.n < 2:
            return math.inf
        variance = max(self.total_sq - self.total * self.total / self.n, 0.0) / (self.n - 1)
        return variance / self.n


def mean_interval(moments: Moments, z: float = Z95) -> Interval:
    """A normal-approximation interval of the mean per unit."""
    variance = moments.variance_of_mean
    if math.isinf(variance):
        return Interval(moments.mean, -math.inf, math.inf)
    half = z * math.sqrt(variance)
    return Interval(moments.mean, moments.mean - half, moments.mean + half)


def rate_moments(successes: float, trials: float) -> Moments:
    """The moments of a 0/1 outcome: its sum of squares is its sum."""
    return Moments(trials, successes, successes)


def lift(treatment: Moments, control: Moments, z: float = Z95) -> Interval | None:
    """Relative lift (treatment mean / control mean - 1) with a delta-method interval; None when the control's
    mean is 0 (no lift can be stated relative to nothing)."""
    if control.mean <= 0 or treatment.n < 2 or control.n < 2:
        return None
    ratio = treatment.mean / control.mean
    # Var(T/C) ≈ (T/C)² · (Var T / T² + Var C / C²), T and C independent (persons are in one arm).
    relative_t = treatment.variance_of_mean / treatment.mean**2 if treatment.mean > 0 else 0.0
    relative_c = control.variance_of_mean / control.mean**2
    if treatment.mean <= 0:
        # The ratio is 0 and its first-order variance comes from the treatment's own spread alone.
        se = math.sqrt(treatment.variance_of_mean) / control.mean
    else:
        se = ratio * math.sqrt(relative_t + relative_c)
    return Interval(ratio - 1, ratio - 1 - z * se, ratio - 1 + z * se)


def difference(treatment: Moments, control: Moments, z: float = Z95) -> Interval:
    """The absolute difference of two means, with Welch's normal interval."""
    if treatment.n < 2 or control.n < 2:
        return Interval(treatment.mean - control.mean, -math.inf, math.inf)
    se = math.sqrt(treatment.variance_of_mean + control.variance_of_mean)
    estimate = treatment.mean - control.mean
    return Interval(estimate, estimate - z * se, estimate + z * se)


@dataclass(frozen=True)
class SampleRatioCheck:
    """Pearson's chi-square of observed exposures per arm against the planned shares."""

    chi_square: float
    degrees_of_freedom: int
    p_value: float

    @property
    def mismatch(self) -> bool:
        """p < 0.001: the split observed is not the split planned (the usual threshold, since the check runs
        again and again as an experiment goes on)."""
        return self.p_value < 0.001


def sample_ratio_mismatch(observed: Sequence[float], planned_shares: Sequence[float]) -> SampleRatioCheck:
    """The chi-square test of observed counts against planned shares (normalised to sum to 1)."""
    if len(observed) != len(planned_shares):
        raise ValueError("one planned share per observed count")
    total = sum(observed)
    share_total = sum(planned_shares)
    cells = [(o, total * s / share_total) for o, s in zip(observed, planned_shares, strict=True) if s > 0]
    if total <= 0 or len(cells) < 2:
        return SampleRatioCheck(0.0, 0, 1.0)
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    return SampleRatioCheck(statistic, dof, chi_square_sf(statistic, dof))


def chi_square_sf(x: float, dof: int) -> float:
    """P(X > x) for X chi-square with dof degrees of freedom: the regularised upper incomplete gamma Q(k/2, x/2)."""
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Q(a, x) by its series below a + 1 and its continued fraction above (Numerical Recipes, 6.2)."""
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        denominator = a
        for _ in range(1000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)
