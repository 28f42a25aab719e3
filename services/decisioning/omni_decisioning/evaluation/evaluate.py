"""EvaluatePolicy's domain: the decision log at a touchpoint turned into logged actions with importance
weights and a reward model, checked for coverage, and handed to the estimators."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.evaluation.estimators import Evaluation, FloatArray, LoggedActions, evaluate
from omni_decisioning.evaluation.policies import CandidatePolicy
from omni_decisioning.evaluation.repository import EvaluationRepository, LoggedRow, Rewards
from omni_kit.errors import FailedPrecondition

MAX_DECISIONS = 1_000_000
"""The most logged decisions one evaluation reads (the oldest in the window)."""
# Pseudo-observations pulling an offer's mean reward at a place towards the place's mean (the reward model).
_SHRINK = 5.0

CLICK, CONVERSION, VALUE = 1, 2, 3


@dataclass(frozen=True)
class Request:
    """What to evaluate."""

    touchpoint: str
    candidate: CandidatePolicy
    metric: int
    start: datetime | None
    end: datetime | None
    bootstrap: int
    seed: int
    max_uncovered: float


@dataclass(frozen=True)
class Result:
    """The evaluation and the share of the candidate's choices the log did not cover."""

    evaluation: Evaluation
    uncovered: float


def _reward(rewards: Rewards | None, metric: int) -> float:
    if rewards is None:
        return 0.0
    if metric == CONVERSION:
        return float(rewards.converted)
    if metric == VALUE:
        return rewards.value
    return float(rewards.clicked)


class Evaluator:
    """Estimates a candidate policy's value from the decision log."""

    def __init__(self, repository: EvaluationRepository) -> None:
        self._repository = repository

    async def logged(
        self, session: AsyncSession, request: Request
    ) -> tuple[list[LoggedRow], dict[tuple[str, str], Rewards]]:
        """The logged decisions (at most MAX_DECISIONS, oldest first) and rewards `estimate` works on."""
        return await self._repository.logged(
            session, touchpoint=request.touchpoint, start=request.start, end=request.end, limit=MAX_DECISIONS
        )


def estimate(rows: list[LoggedRow], rewards: dict[tuple[str, str], Rewards], request: Request) -> Result:
    """IPW, SNIPW and DR with bootstrap intervals for the logged rows (pure: no database).

    FailedPrecondition NO_LOGGED_DECISIONS when nothing chosen is logged in the window, and
    PROPENSITY_NOT_COVERED when more than max_uncovered of the candidate's choices fall on offers the
    logging policy gave no chance (no estimator can say anything about those).
    """
    # One logged action per chosen candidate with a positive rank propensity.
    decision_of, offers_of, place_of, chosen_of, logged_p, reward = [], [], [], [], [], []
    covered_of: list[tuple[bool, ...]] = []
    decisions = 0
    for row in rows:
        offers = tuple(str(c[0]) for c in row.candidates)
        covered = tuple(float(c[3]) > 0 for c in row.candidates)
        added = False
        for position, candidate in enumerate(row.candidates):
            rank, rank_propensity, chosen = int(candidate[2]), float(candidate[4]), bool(candidate[5])
            if not chosen or rank < 1 or rank_propensity <= 0:
                continue
            added = True
            decision_of.append(decisions)
            offers_of.append(offers)
            covered_of.append(covered)
            place_of.append(rank - 1)
            chosen_of.append(position)
            logged_p.append(rank_propensity)
            reward.append(_reward(rewards.get((row.decision_id, offers[position])), request.metric))
        decisions += added
    if not decision_of:
        raise FailedPrecondition(
            message=f"no logged decision at {request.touchpoint!r} chose an offer in the window",
            reason="NO_LOGGED_DECISIONS",
            metadata={"touchpoint": request.touchpoint},
        )
    y = np.asarray(reward)
    # The reward model: the mean reward of each offer at each place, shrunk towards the place's mean.
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    place_sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, (offers, position) in enumerate(zip(offers_of, chosen_of, strict=True)):
        for entry in (sums[(offers[position], place_of[i])], place_sums[place_of[i]]):
            entry[0] += y[i]
            entry[1] += 1
    place_mean = {place: s / n for place, (s, n) in place_sums.items()}

    def modelled(offer: str, place: int) -> float:
        s, n = sums.get((offer, place), (0.0, 0.0))
        return (s + _SHRINK * place_mean.get(place, 0.0)) / (n + _SHRINK)

    # What the candidate does with a set of eligible offers at a place is the same for every decision that
    # had that set: computed once per (offers, coverage, place), from one matrix per set of offers covering
    # every place it was logged at.
    deepest: dict[tuple[str, ...], int] = {}
    for offers, place in zip(offers_of, place_of, strict=True):
        deepest[offers] = max(deepest.get(offers, 0), place + 1)
    seen: dict[tuple[tuple[str, ...], tuple[bool, ...], int], tuple[FloatArray, float, float, str]] = {}
    weight, direct, model_q = np.empty(len(y)), np.empty(len(y)), np.empty(len(y))
    uncovered = 0.0
    worst = ""
    for i in range(len(y)):
        offers, covered, place = offers_of[i], covered_of[i], place_of[i]
        key = (offers, covered, place)
        found = seen.get(key)
        if found is None:
            matrix = request.candidate.places(offers, deepest[offers])
            column = matrix[:, place] if matrix.shape[1] > place else np.zeros(len(offers))
            nonzero = np.flatnonzero(column)
            value = float(sum(column[k] * modelled(offers[k], place) for k in nonzero))
            missed = [k for k in nonzero if not covered[k]]
            found = seen[key] = (
                column,
                value,
                float(column[missed].sum()) if missed else 0.0,
                offers[missed[0]] if missed else "",
            )
        column, direct[i], missed_mass, missed_offer = found
        weight[i] = float(column[chosen_of[i]]) / logged_p[i]
        model_q[i] = modelled(offers[chosen_of[i]], place)
        uncovered += missed_mass
        worst = worst or missed_offer
    uncovered /= len(y)
    if uncovered > request.max_uncovered:
        raise FailedPrecondition(
            message=f"{uncovered:.1%} of the candidate's choices fall on offers the logged policy never chose "
            f"(at most {request.max_uncovered:.1%} allowed), e.g. offer {worst}: the log cannot say what they "
            "would have earned",
            reason="PROPENSITY_NOT_COVERED",
            metadata={"touchpoint": request.touchpoint, "uncovered": f"{uncovered:.6f}", "offer_id": worst},
        )
    logged = LoggedActions(
        decision=np.asarray(decision_of, dtype=np.intp),
        weight=weight,
        reward=y,
        direct=direct,
        modelled=model_q,
    )
    rng = np.random.default_rng(
        request.seed & 0xFFFF_FFFF_FFFF_FFFF
    )  # any int64 seeds; numpy takes only >= 0
    return Result(evaluate(logged, bootstrap=request.bootstrap, rng=rng), uncovered)
