"""The estimators of experiment results and reports, against published values and by simulated coverage."""

from __future__ import annotations

import math
import random

import pytest

from omni_decisioning.experiments.stats import (
    Moments,
    chi_square_sf,
    difference,
    lift,
    mean_interval,
    rate_moments,
    sample_ratio_mismatch,
    wilson,
)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263, 15/148, 0/20, 1/29.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson(successes, trials)
    assert interval.estimate == pytest.approx(successes / trials)
    assert interval.low == pytest.approx(low, abs=1e-4)
    assert interval.high == pytest.approx(high, abs=1e-4)


def test_wilson_without_trials_says_nothing_is_known() -> None:
    interval = wilson(0, 0)
    assert (interval.low, interval.high) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("x", "dof", "p"),
    [
        # Critical values of the chi-square distribution (NIST/SEMATECH e-Handbook, table 1.3.6.7.4).
        (3.841, 1, 0.05),
        (10.828, 1, 0.001),
        (5.991, 2, 0.05),
        (11.070, 5, 0.05),
        (23.209, 10, 0.01),
        (2.706, 1, 0.10),
        (0.455, 1, 0.50),
    ],
)
def test_chi_square_tail_matches_the_table(x: float, dof: int, p: float) -> None:
    assert chi_square_sf(x, dof) == pytest.approx(p, rel=2e-3)


def test_sample_ratio_mismatch_flags_a_broken_split_only() -> None:
    fine = sample_ratio_mismatch([4_520, 4_580, 1_010], [45, 45, 10])
    assert not fine.mismatch
    assert fine.degrees_of_freedom == 2
    # 50/50 planned, 5,000 against 5,300: chi-square 8.74 on 1 df, p = 0.0031 (not yet alarming) ...
    borderline = sample_ratio_mismatch([5_000, 5_300], [50, 50])
    assert borderline.chi_square == pytest.approx(300**2 / 10_300, rel=1e-9)
    assert borderline.p_value == pytest.approx(0.00312, abs=5e-5)
    assert not borderline.mismatch
    # ... and 5,000 against 5,600 is p ≈ 6e-9.
    assert sample_ratio_mismatch([5_000, 5_600], [50, 50]).mismatch


def test_mean_interval_of_a_small_sample() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    interval = mean_interval(Moments(5, sum(values), sum(v * v for v in values)))
    # Sample sd sqrt(2.5); standard error sqrt(0.5); 1.96 of them either side.
    assert interval.estimate == 3.0
    assert interval.high - 3.0 == pytest.approx(1.959964 * math.sqrt(0.5), rel=1e-6)


def test_difference_and_lift_of_equal_arms_include_zero() -> None:
    arm = rate_moments(100, 1_000)
    assert not difference(arm, arm).excludes(0.0)
    interval = lift(arm, arm)
    assert interval is not None and interval.estimate == 0.0 and not interval.excludes(0.0)


def test_lift_without_control_conversions_is_not_stated() -> None:
    assert lift(rate_moments(5, 100), rate_moments(0, 100)) is None


def test_lift_interval_covers_the_true_lift_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    p_control, p_treatment, n = 0.10, 0.12, 3_000
    covered = 0
    runs = 300
    for _ in range(runs):
        control = sum(rng.random() < p_control for _ in range(n))
        treatment = sum(rng.random() < p_treatment for _ in range(n))
        interval = lift(rate_moments(treatment, n), rate_moments(control, n))
        assert interval is not None
        covered += interval.low <= p_treatment / p_control - 1 <= interval.high
    assert 0.91 <= covered / runs <= 0.98
