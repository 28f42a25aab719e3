"""Learning a match model from records, as Splink does: u from random pairs, m by EM over blocked pairs.

- u = P(level | not the same person) is the level frequencies of random pairs of the records (nearly all of
  them different people), kept fixed. Candidate pairs are no estimate of it: they share a blocking key, so
  they agree on the key's fields far more often than two people do (estimated over candidates, postcode
  agreement came out as evidence *against* a match).
- m = P(level | same person) is learnt by EM, u fixed, once for each kind of blocking key over the pairs
  that kind of key finds, with the fields the key is made of left out (those pairs agree on them by
  construction); a field's m is the average over the kinds not made of it, weighted by the matches each
  found.
- The prior is that of a random pair: the matches EM finds among the candidate pairs over all pairs.
- Every field's weights are then made monotone (model.monotone): a partial agreement never weighs more
  than an exact one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omni_identity.matching.blocking import KEY_FIELDS, candidate_pairs, key_kind
from omni_identity.matching.comparison import COMPARISONS, FIELD_INDEX, MISSING, compare
from omni_identity.matching.em import estimate, level_frequencies, prior_given
from omni_identity.matching.model import MatchModel, model_from_arrays
from omni_identity.matching.records import NormalisedRecord

N_LEVELS = [len(c.levels) for c in COMPARISONS]
# Fields whose exact agreement must come out as evidence for a match, or the model is not believable.
_TELLING_FIELDS = ("given_name", "surname", "date_of_birth")
MIN_PAIRS = 50
MIN_MATCHES = 20
MIN_EXACT_M = 0.5
# Counted once more on every level of u, so that a level no random pair showed is rare, not impossible.
_U_PSEUDO_COUNT = 1.0
# EM's starting share of matches among the pairs of one kind of key.
_START_PRIOR = 0.1


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
    random_pair_count: int = 100_000,
    max_block: int = 500,
    seed: int = 20240611,
) -> TrainingResult:
    """Train on the pairs within left (deduplication) or between left and right (linkage).

    Raises TrainingError when there are too few pairs, or when the result does not treat agreement on
    names and date of birth as evidence of a match (EM found some other split of the pairs, which happens
    when hardly any of them are the same person).
    """
    linking = right is not None
    other = right if right is not None else left
    other_keys = right_keys if right_keys is not None else left_keys
    pairs = _pairs(left_keys, other_keys, max_block, linking)
    if len(pairs) < MIN_PAIRS:
        raise TrainingError(f"only {len(pairs)} candidate pairs; at least {MIN_PAIRS} are needed")
    row_of = {pair: row for row, pair in enumerate(pairs)}
    vectors = compare([left[i] for i, _ in pairs], [other[j] for _, j in pairs])
    sampled = _random_pairs(len(left), len(other), random_pair_count, seed, distinct=not linking)
    random_vectors = compare([left[i] for i, _ in sampled], [other[j] for _, j in sampled])
    u = level_frequencies(
        random_vectors, N_LEVELS, [np.array(f.u) for f in start.fields], pseudo_count=_U_PSEUDO_COUNT
    )
    m_start = [np.array(f.m) for f in start.fields]
    found_m: list[list[tuple[float, np.ndarray]]] = [[] for _ in COMPARISONS]
    iterations = 0
    converged = True
    left_by_kind, other_by_kind = _by_kind(left_keys), _by_kind(other_keys)
    for kind, fields in KEY_FIELDS.items():
        kind_pairs = _pairs(left_by_kind[kind], other_by_kind[kind], max_block, linking)
        if len(kind_pairs) < MIN_PAIRS:
            continue
        kind_vectors = vectors[[row_of[p] for p in kind_pairs]].copy()
        left_out = [FIELD_INDEX[f] for f in fields]
        kind_vectors[:, left_out] = MISSING
        result = estimate(kind_vectors, N_LEVELS, m=m_start, u=u, prior=_START_PRIOR, fix_u=True)
        iterations += result.iterations
        converged = converged and result.converged
        matches = result.prior * len(kind_pairs)
        for f in range(len(COMPARISONS)):
            present = int((kind_vectors[:, f] != MISSING).sum())
            if f not in left_out and present:
                found_m[f].append((matches * present / len(kind_pairs), result.m[f]))
    m = [
        np.average([x for _, x in found], axis=0, weights=[w for w, _ in found])
        if found and sum(w for w, _ in found) > 0
        else m_start[f]
        for f, found in enumerate(found_m)
    ]
    candidate_prior = prior_given(vectors, m, u)
    expected_matches = candidate_prior * len(pairs)
    all_pairs = len(left) * len(other) if linking else len(left) * (len(left) - 1) // 2
    model = model_from_arrays(
        version, expected_matches / all_pairs, m, u, trained_pairs=len(pairs), iterations=iterations
    )
    if expected_matches < MIN_MATCHES:
        raise TrainingError(
            f"EM found about {expected_matches:.0f} matching pairs among {len(pairs)}; at least {MIN_MATCHES} "
            "are needed: the records hold too few duplicates to learn from"
        )
    check_plausible(model)
    return TrainingResult(model, len(pairs), len(sampled), converged)


def _by_kind(keys: Sequence[Sequence[str]]) -> dict[str, list[list[str]]]:
    """Each record's keys of each kind, for every kind of key."""
    found: dict[str, list[list[str]]] = {kind: [[] for _ in keys] for kind in KEY_FIELDS}
    for row, record_keys in enumerate(keys):
        for key in record_keys:
            kind_keys = found.get(key_kind(key))
            if kind_keys is not None:
                kind_keys[row].append(key)
    return found


def _pairs(
    left_keys: Sequence[Sequence[str]], right_keys: Sequence[Sequence[str]], max_block: int, linking: bool
) -> list[tuple[int, int]]:
    """The candidate pairs, sorted; within one file each unordered pair once."""
    pairs = candidate_pairs([list(k) for k in left_keys], [list(k) for k in right_keys], max_block=max_block)
    return sorted(pairs if linking else ((i, j) for i, j in pairs if i < j))


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
