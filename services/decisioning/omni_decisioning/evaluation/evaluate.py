"""EvaluatePolicy's domain: the decision log at a touchpoint turned into logged actions with importance
weights and a reward model, checked for coverage, and handed to the estimators."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.evaluation.estimators import Evaluation, LoggedActions, evaluate
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
    eligible: list[tuple[list[str], list[float]]] = []
    for row in rows:
        offers = [str(c[0]) for c in row.candidates]
        propensities = [float(c[3]) for c in row.candidates]
        index = len(eligible)
        added = False
        for position, candidate in enumerate(row.candidates):
            rank, rank_propensity, chosen = int(candidate[2]), float(candidate[4]), bool(candidate[5])
            if not chosen or rank < 1 or rank_propensity <= 0:
                continue
            added = True
            decision_of.append(index)
            offers_of.append(offers)
            place_of.append(rank - 1)
            chosen_of.append(position)
            logged_p.append(rank_propensity)
            reward.append(_reward(rewards.get((row.decision_id, offers[position])), request.metric))
        if added:
            eligible.append((offers, propensities))
    if not decision_of:
        raise FailedPrecondition(
            message=f"no logged decision at {request.touchpoint!r} chose an offer in the window",
            reason="NO_LOGGED_DECISIONS",
            metadata={"touchpoint": request.touchpoint},
        )
    y = np.asarray(reward)
    places = np.asarray(place_of)
    # The reward model: the mean reward of each offer at each place, shrunk towards the place's mean.
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    place_sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, (offers, position) in enumerate(zip(offers_of, chosen_of, strict=True)):
        entry = sums[(offers[position], int(places[i]))]
        entry[0] += y[i]
        entry[1] += 1
        place_entry = place_sums[int(places[i])]
        place_entry[0] += y[i]
        place_entry[1] += 1
    place_mean = {place: s / n for place, (s, n) in place_sums.items()}

    def modelled(offer: str, place: int) -> float:
        s, n = sums.get((offer, place), (0.0, 0.0))
        return (s + _SHRINK * place_mean[place]) / (n + _SHRINK)

    weight, direct, model_q = np.empty(len(y)), np.empty(len(y)), np.empty(len(y))
    uncovered = 0.0
    worst = ""
    for i in range(len(y)):
        offers, propensities = eligible[decision_of[i]]
        place = int(places[i])
        matrix = request.candidate.places(offers, place + 1)
        column = matrix[:, place] if matrix.shape[1] > place else np.zeros(len(offers))
        target = float(column[chosen_of[i]])
        weight[i] = target / logged_p[i]
        q = np.array([modelled(offer, place) for offer in offers]) if column.any() else np.zeros(len(offers))
        direct[i] = float(column @ q)
        model_q[i] = modelled(offers[chosen_of[i]], place)
        missed = [k for k, p in enumerate(propensities) if p <= 0 and column[k] > 0]
        if missed:
            uncovered += float(column[missed].sum())
            worst = worst or offers[missed[0]]
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
    rng = np.random.default_rng(request.seed)
    return Result(evaluate(logged, bootstrap=request.bootstrap, rng=rng), uncovered)
