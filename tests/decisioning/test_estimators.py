"""The off-policy estimators on synthetic logs whose true value is known: a logging policy and a candidate
over arms with known reward rates, so the candidate's value is Σ π(a) μ(a) exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from omni_decisioning.evaluation.estimators import (
    LoggedActions,
    effective_sample_size,
    evaluate,
    ipw,
    snipw,
)
from omni_decisioning.evaluation.evaluate import Request, estimate
from omni_decisioning.evaluation.policies import CandidatePolicy, RankingCandidate, ThompsonCandidate
from omni_decisioning.evaluation.repository import LoggedRow, Rewards
from omni_kit.errors import FailedPrecondition

ARMS = [f"00000000-0000-7000-8000-00000000000{i}" for i in range(5)]
MU = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
LOGGING = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
TARGET = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
TRUE_VALUE = float(TARGET @ MU)  # 0.415; the logging policy earns 0.25


class Fixed(CandidatePolicy):
    """A stochastic candidate with fixed probabilities at the first place."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self._p = probabilities

    def places(self, offers: Sequence[str], places: int) -> np.ndarray:
        matrix = np.zeros((len(offers), places))
        matrix[:, 0] = [self._p[ARMS.index(o)] for o in offers]
        return matrix


def _log(n: int, rng: np.random.Generator, logging: np.ndarray = LOGGING) -> tuple[list[LoggedRow], dict]:
    """n single-slot decisions over the five arms by the logging policy, clicks drawn from MU."""
    rows, rewards = [], {}
    chosen = rng.choice(len(ARMS), size=n, p=logging)
    clicks = rng.random(n) < MU[chosen]
    for i in range(n):
        candidates = [
            [
                arm,
                0.0,
                1 if k == chosen[i] else 0,
                logging[k],
                logging[k] if k == chosen[i] else 0.0,
                int(k == chosen[i]),
            ]
            for k, arm in enumerate(ARMS)
        ]
        rows.append(LoggedRow(f"decision-{i}", candidates))
        if clicks[i]:
            rewards[(f"decision-{i}", ARMS[chosen[i]])] = Rewards(True, False, 0.0)
    return rows, rewards


def _request(candidate: CandidatePolicy, *, bootstrap: int = 300, seed: int = 1) -> Request:
    return Request(
        touchpoint="t",
        candidate=candidate,
        metric=1,
        start=None,
        end=None,
        bootstrap=bootstrap,
        seed=seed,
        max_uncovered=0.001,
    )


def test_each_estimator_finds_the_known_value_and_its_interval_covers_it() -> None:
    # (one sample: its interval may miss, as 5 in 100 do; the next test counts how often they cover)
    rows, rewards = _log(20_000, np.random.default_rng(8))
    result = estimate(rows, rewards, _request(Fixed(TARGET)))
    by_name = {e.estimator: e for e in result.evaluation.estimates}
    assert set(by_name) == {"ipw", "snipw", "dr"}
    for name, e in by_name.items():
        assert abs(e.value - TRUE_VALUE) / TRUE_VALUE < 0.05, name
        assert e.ci_low < TRUE_VALUE < e.ci_high, name
    assert abs(result.evaluation.logged_value - float(LOGGING @ MU)) < 0.01
    # The candidate leans on the arm the log chose least: far fewer effective actions than logged.
    assert 0.2 * 20_000 < result.evaluation.effective_sample_size < 0.6 * 20_000
    # A reward model that is right (here: estimated from many actions per arm) narrows the interval.
    width = {name: e.ci_high - e.ci_low for name, e in by_name.items()}
    assert width["dr"] < width["ipw"]


def test_the_intervals_cover_the_true_value_about_95_times_in_100() -> None:
    rng = np.random.default_rng(11)
    covered = {"ipw": 0, "snipw": 0, "dr": 0}
    repeats = 30
    for seed in range(repeats):
        rows, rewards = _log(1_000, rng)
        for e in estimate(
            rows, rewards, _request(Fixed(TARGET), bootstrap=200, seed=seed)
        ).evaluation.estimates:
            covered[e.estimator] += e.ci_low <= TRUE_VALUE <= e.ci_high
    for name, hits in covered.items():
        assert hits >= 0.8 * repeats, (name, hits)


def test_evaluating_the_logging_policy_itself_gives_its_logged_value_with_every_weight_one() -> None:
    rows, rewards = _log(5_000, np.random.default_rng(3))
    result = estimate(rows, rewards, _request(Fixed(LOGGING)))
    snipw_value = next(e.value for e in result.evaluation.estimates if e.estimator == "snipw")
    assert snipw_value == pytest.approx(result.evaluation.logged_value)
    assert result.evaluation.effective_sample_size == pytest.approx(5_000)


def test_a_deterministic_candidate_is_evaluated_from_the_actions_it_agrees_with() -> None:
    rows, rewards = _log(20_000, np.random.default_rng(5))
    best_first = RankingCandidate({arm: -i for i, arm in enumerate(ARMS)})  # always the last arm (μ 0.5)
    result = estimate(rows, rewards, _request(best_first))
    for e in result.evaluation.estimates:
        assert abs(e.value - 0.5) < 0.05, e


def test_a_candidate_the_log_does_not_cover_is_refused() -> None:
    # The logging policy never chose the last arm: nothing in the log says what it earns.
    logging = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    rows, rewards = _log(2_000, np.random.default_rng(9), logging)
    with pytest.raises(FailedPrecondition) as refused:
        estimate(rows, rewards, _request(Fixed(TARGET)))
    assert refused.value.reason == "PROPENSITY_NOT_COVERED"
    assert refused.value.metadata["offer_id"] == ARMS[4]


def test_nothing_logged_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        estimate([], {}, _request(Fixed(TARGET)))
    assert refused.value.reason == "NO_LOGGED_DECISIONS"


def test_thompson_candidate_probabilities_sum_to_one_per_place() -> None:
    candidate = ThompsonCandidate(
        {arm: (1.0 + i, 5.0) for i, arm in enumerate(ARMS)}, draws=50_000, rng=np.random.default_rng(0)
    )
    matrix = candidate.places(ARMS, 3)
    assert matrix.shape == (5, 3)
    assert np.allclose(matrix.sum(axis=0), 1.0)
    assert matrix[4, 0] > matrix[0, 0]


def test_the_plain_estimators() -> None:
    w = np.array([2.0, 0.5, 0.5, 1.0])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    assert ipw(w, y) == pytest.approx(2.5 / 4)
    assert snipw(w, y) == pytest.approx(2.5 / 4.0)
    assert effective_sample_size(w) == pytest.approx(16 / 5.5)
    logged = LoggedActions(
        decision=np.arange(4), weight=w, reward=y, direct=np.full(4, 0.3), modelled=np.full(4, 0.3)
    )
    dr = next(
        e for e in evaluate(logged, bootstrap=0, rng=np.random.default_rng()).estimates if e.estimator == "dr"
    )
    assert dr.value == pytest.approx(0.3 + float(np.mean(w * (y - 0.3))))
