"""The Fellegi-Sunter match model: per field and level, m = P(level | same person) and u = P(level | not),
and the prior probability that two records picked at random are the same person (u is measured on random
pairs too, so the weights and the prior are of one population; see training.py).

A pair's match weight is log2 of the prior odds plus, for each compared field, log2(m / u) of its level;
the match probability is the posterior 1 / (1 + 2^-weight). Missing fields add nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from omni_identity.matching.comparison import COMPARISONS, Kind

_CLIP = 1e-6
# The prior of a random pair is about one over the store's size: it may be far below _CLIP.
_PRIOR_CLIP = 1e-12

# Hand-set values for a store that has not been trained yet. m: what the same person's records typically
# look like. u: how often two records of different people (a random pair, not a candidate pair) agree, from
# how common names, birthdays, streets and postcodes are in a population; the prior is that of a random pair
# in a store of about a million people. Every field's weights fall level by level (see monotone()).
_DEFAULT_M: dict[Kind, tuple[float, ...]] = {
    Kind.TEXT: (0.86, 0.06, 0.04, 0.04),
    Kind.CODE: (0.88, 0.08, 0.04),
    Kind.DATE: (0.88, 0.08, 0.04),
    Kind.EXACT: (0.95, 0.05),
    Kind.IDENTIFIERS: (0.95, 0.05),
}
_DEFAULT_U: dict[Kind, tuple[float, ...]] = {
    Kind.TEXT: (0.005, 0.003, 0.03, 0.962),
    Kind.CODE: (0.02, 0.06, 0.92),
    Kind.DATE: (0.00004, 0.001, 0.99896),
    Kind.EXACT: (0.3, 0.7),
    # Family members share an email or a phone: a shared identifier is common evidence, not proof.
    Kind.IDENTIFIERS: (0.001, 0.999),
}
# Kind.CODE and Kind.DATE have the same levels, so the enum makes them one member: fields of either kind
# whose u differ are set here by name.
_DEFAULT_U_BY_FIELD: dict[str, tuple[float, ...]] = {
    "date_of_birth": (0.00004, 0.001, 0.99896),
    "street_number": (0.02, 0.06, 0.92),
    "given_name": (0.01, 0.005, 0.03, 0.955),
    "address_1": (0.002, 0.002, 0.02, 0.976),
    "suburb": (0.003, 0.002, 0.02, 0.975),
    "postcode": (0.003, 0.03, 0.967),
}
DEFAULT_PRIOR = 0.000001


@dataclass(frozen=True)
class FieldParameters:
    """m and u probabilities of one field's levels, best level first."""

    field: str
    levels: tuple[str, ...]
    m: tuple[float, ...]
    u: tuple[float, ...]

    def weights(self) -> tuple[float, ...]:
        """log2(m / u) of each level: the evidence the level carries for a match."""
        return tuple(float(np.log2(m / u)) for m, u in zip(self.m, self.u, strict=True))


@dataclass(frozen=True)
class MatchModel:
    """A versioned set of parameters; version 0 is the built-in default that no training produced."""

    version: int
    prior: float
    fields: tuple[FieldParameters, ...]
    trained_pairs: int = 0
    iterations: int = 0

    def __post_init__(self) -> None:
        expected = [(c.field, c.levels) for c in COMPARISONS]
        if [(f.field, f.levels) for f in self.fields] != expected:
            raise ValueError("the model's fields and levels do not match the comparisons")

    def weight_table(self) -> npt.NDArray[np.float64]:
        """An (n_fields, max_levels + 1) table of log2(m / u); the last column (for MISSING) is 0."""
        width = max(len(f.levels) for f in self.fields) + 1
        table = np.zeros((len(self.fields), width))
        for i, field in enumerate(self.fields):
            table[i, : len(field.levels)] = field.weights()
        return table

    def match_weights(self, vectors: npt.NDArray[np.int8]) -> npt.NDArray[np.float64]:
        """The match weight (log2 posterior odds) of each comparison vector."""
        table = self.weight_table()
        # MISSING (-1) indexes the last column, which holds 0.
        per_field = table[np.arange(len(self.fields)), vectors]
        prior = float(np.log2(self.prior / (1.0 - self.prior)))
        return np.asarray(prior + per_field.sum(axis=1), dtype=np.float64)

    def probabilities(self, vectors: npt.NDArray[np.int8]) -> npt.NDArray[np.float64]:
        """The posterior match probability of each comparison vector."""
        return probability(self.match_weights(vectors))

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON-ready mapping (what the model table stores)."""
        return {
            "prior": self.prior,
            "fields": [
                {"field": f.field, "levels": list(f.levels), "m": list(f.m), "u": list(f.u)}
                for f in self.fields
            ],
        }

    @classmethod
    def from_json(
        cls, version: int, data: Mapping[str, Any], *, trained_pairs: int = 0, iterations: int = 0
    ) -> MatchModel:
        """The model stored as to_json(); ValueError when it no longer fits the comparisons."""
        fields = tuple(
            FieldParameters(f["field"], tuple(f["levels"]), tuple(f["m"]), tuple(f["u"]))
            for f in data["fields"]
        )
        return cls(version, float(data["prior"]), fields, trained_pairs=trained_pairs, iterations=iterations)


def monotone(field: FieldParameters) -> FieldParameters:
    """The field with no level weighing more than a better one (levels are best first).

    A level's m is lowered until its weight is at most the better level's (u stays: it is measured on
    random pairs), then m is scaled back to a sum of 1, which moves every weight of the field by the same
    amount. Unchanged when the weights already fall level by level.
    """
    weights = np.asarray(field.weights())
    capped = np.minimum.accumulate(weights)
    if np.array_equal(capped, weights):
        return field
    m = np.asarray(field.u) * np.exp2(capped)
    m = m / m.sum()
    return FieldParameters(field.field, field.levels, tuple(float(x) for x in m), field.u)


def probability(weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Posterior probabilities from match weights (log2 odds)."""
    return np.asarray(1.0 / (1.0 + np.exp2(-np.clip(weights, -200, 200))), dtype=np.float64)


def default_model() -> MatchModel:
    """The built-in model (version 0) used until the first training."""
    fields = []
    for comparison in COMPARISONS:
        u = _DEFAULT_U_BY_FIELD.get(comparison.field, _DEFAULT_U[comparison.kind])
        fields.append(FieldParameters(comparison.field, comparison.levels, _DEFAULT_M[comparison.kind], u))
    return MatchModel(0, DEFAULT_PRIOR, tuple(fields))


def model_from_arrays(
    version: int,
    prior: float,
    m: Sequence[npt.NDArray[np.float64]],
    u: Sequence[npt.NDArray[np.float64]],
    *,
    trained_pairs: int = 0,
    iterations: int = 0,
) -> MatchModel:
    """A model from per-field arrays of m and u (as EM produces them), clipped away from 0 and 1."""
    fields = tuple(
        monotone(
            FieldParameters(
                c.field,
                c.levels,
                tuple(float(x) for x in np.clip(mi, _CLIP, 1 - _CLIP)),
                tuple(float(x) for x in np.clip(ui, _CLIP, 1 - _CLIP)),
            )
        )
        for c, mi, ui in zip(COMPARISONS, m, u, strict=True)
    )
    return MatchModel(
        version,
        float(np.clip(prior, _PRIOR_CLIP, 1 - _CLIP)),
        fields,
        trained_pairs=trained_pairs,
        iterations=iterations,
    )
