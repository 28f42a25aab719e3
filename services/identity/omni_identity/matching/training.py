"""Learning a match model from records: candidate pairs by blocking, u started from random pairs, EM.

The pairs EM sees are the ones the matcher will score (those sharing a blocking key), so the prior and the u
probabilities it learns are those of candidate pairs. Random pairs, nearly all non-matches, give u its
starting point; m starts from the current model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omni_identity.matching.blocking import candidate_pairs
from omni_identity.matching.comparison import COMPARISONS, FIELD_INDEX, compare
from omni_identity.matching.em import estimate, level_frequencies
from omni_identity.matching.model import MatchModel, model_from_arrays
from omni_identity.matching.records import NormalisedRecord

N_LEVELS = [len(c.levels) for c in COMPARISONS]
# Fields whose exact agreement must come out as evidence for a match, or the model is not believable.
_TELLING_FIELDS = ("given_name", "surname", "date_of_birth")
MIN_PAIRS = 50
MIN_MATCHES = 20
MIN_EXACT_M = 0.5


class TrainingError(ValueError):
    """The records cannot give a believable model (too few, or too few of them the same person)."""


@dataclass(frozen=True)
class TrainingResult:
    """A trained model and what it was trained on."""

    model: MatchModel
    candidate_pairs: int
    random_pairs: int
    converged: bool


def train(
    left: Sequence[NormalisedRecord],
    left_keys: Sequence[Sequence[str]],
    start: MatchModel,
    *,
    version: int,
    right: Sequence[NormalisedRecord] | None = None,
    right_keys: Sequence[Sequence[str]] | None = None,
    random_pair_count: int = 20_000,
    max_block: int = 500,
    seed: int = 20240611,
) -> TrainingResult:
    """Train on the candidate pairs within left (deduplication) or between left and right (linkage).

    Raises TrainingError when there are too few pairs, or when the result does not treat agreement on
    names and date of birth as evidence of a match (EM found some other split of the pairs, which happens
    when hardly any of them are the same person).
    """
    linking = right is not None
    other = right if right is not None else left
    other_keys = right_keys if right_keys is not None else left_keys
    pairs = sorted(
        candidate_pairs([list(k) for k in left_keys], [list(k) for k in other_keys], max_block=max_block)
    )
    if not linking:
        pairs = [(i, j) for i, j in pairs if i < j]
    if len(pairs) < MIN_PAIRS:
        raise TrainingError(f"only {len(pairs)} candidate pairs; at least {MIN_PAIRS} are needed")
    vectors = compare([left[i] for i, _ in pairs], [other[j] for _, j in pairs])
    sampled = _random_pairs(len(left), len(other), random_pair_count, seed, distinct=not linking)
    random_vectors = compare([left[i] for i, _ in sampled], [other[j] for _, j in sampled])
    u_start = level_frequencies(random_vectors, N_LEVELS, [np.array(f.u) for f in start.fields])
    result = estimate(
        vectors,
        N_LEVELS,
        m=[np.array(f.m) for f in start.fields],
        u=u_start,
        prior=max(start.prior, 0.01),
    )
    model = model_from_arrays(
        version, result.prior, result.m, result.u, trained_pairs=len(pairs), iterations=result.iterations
    )
    expected_matches = result.prior * len(pairs)
    if expected_matches < MIN_MATCHES:
        raise TrainingError(
            f"EM found about {expected_matches:.0f} matching pairs among {len(pairs)}; at least {MIN_MATCHES} "
            "are needed: the records hold too few duplicates to learn from"
        )
    check_plausible(model)
    return TrainingResult(model, len(pairs), len(sampled), result.converged)


def check_plausible(model: MatchModel) -> None:
    """Raise TrainingError unless names and date of birth behave as they do for the same person.

    The same person's records mostly agree exactly on them, and disagree less often than other pairs.
    When the pairs hold too few duplicates, EM settles on another split (pairs from the same street, or
    sharing a common surname) that fails this.
    """
    for name in _TELLING_FIELDS:
        field = model.fields[FIELD_INDEX[name]]
        if field.m[0] < MIN_EXACT_M or field.m[0] <= field.u[0] or field.m[-1] >= field.u[-1]:
            raise TrainingError(
                f"the trained model does not take agreement on {name} as evidence of a match; "
                "the records hold too few duplicates to learn from"
            )


def _random_pairs(
    n_left: int, n_right: int, count: int, seed: int, *, distinct: bool
) -> list[tuple[int, int]]:
    if n_left == 0 or n_right == 0 or (distinct and n_left < 2):
        return []
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        i, j = rng.randrange(n_left), rng.randrange(n_right)
        if distinct and i == j:
            continue
        pairs.append((i, j))
    return pairs
