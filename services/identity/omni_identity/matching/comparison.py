"""Field-by-field comparison of record pairs into agreement levels: the comparison vectors the model scores.

Each compared field has a few levels, best first; a pair gets one level per field, or MISSING when either
record lacks the value (missing values are neither evidence for nor against a match):

- names and address parts: exact / Jaro-Winkler ≥ 0.92 / ≥ 0.80 / else;
- postcode, house number and date of birth: exact / near (one character off, two adjacent characters
  swapped, one missing; for dates also day and month swapped) / else;
- state: exact / else; identifiers: one shared / none shared though both carry that type.

Entry clerks swap fields: when given name and surname (or the two address lines) agree better crossed than
straight, the crossed comparison is the one kept.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz import process
from rapidfuzz.distance import OSA, JaroWinkler

from omni_identity.matching.records import NormalisedRecord

MISSING = -1

Levels = npt.NDArray[np.int8]


class Kind(Enum):
    """How a field is compared, and so which levels it has."""

    TEXT = ("exact", "jaro_winkler_0.92", "jaro_winkler_0.80", "else")
    CODE = ("exact", "near", "else")
    DATE = ("exact", "near", "else")
    EXACT = ("exact", "else")
    IDENTIFIERS = ("shared", "else")

    @property
    def levels(self) -> tuple[str, ...]:
        """The names of the levels, best first."""
        return self.value


@dataclass(frozen=True)
class Comparison:
    """One compared field."""

    field: str
    kind: Kind

    @property
    def levels(self) -> tuple[str, ...]:
        """The names of the field's levels, best first."""
        return self.kind.levels


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("given_name", Kind.TEXT),
    Comparison("surname", Kind.TEXT),
    Comparison("date_of_birth", Kind.DATE),
    Comparison("street_number", Kind.CODE),
    Comparison("address_1", Kind.TEXT),
    Comparison("address_2", Kind.TEXT),
    Comparison("suburb", Kind.TEXT),
    Comparison("postcode", Kind.CODE),
    Comparison("state", Kind.EXACT),
    Comparison("identifiers", Kind.IDENTIFIERS),
)
FIELD_INDEX = {c.field: i for i, c in enumerate(COMPARISONS)}
_SWAPPABLE = (("given_name", "surname"), ("address_1", "address_2"))


def compare(left: Sequence[NormalisedRecord], right: Sequence[NormalisedRecord]) -> Levels:
    """The comparison vectors of the pairs (left[k], right[k]): an int8 array, one row per pair."""
    if len(left) != len(right):
        raise ValueError("left and right must pair up")
    vectors = np.full((len(left), len(COMPARISONS)), MISSING, dtype=np.int8)
    if not left:
        return vectors
    values = {c.field: (_values(left, c.field), _values(right, c.field)) for c in COMPARISONS}
    columns = {
        c.field: _column(c.kind, *values[c.field]) for c in COMPARISONS if c.kind is not Kind.IDENTIFIERS
    }
    for first, second in _SWAPPABLE:
        crossed_first = _text_levels(values[first][0], values[second][1])
        crossed_second = _text_levels(values[second][0], values[first][1])
        straight = _badness(columns[first]) + _badness(columns[second])
        crossed = _badness(crossed_first) + _badness(crossed_second)
        better = crossed < straight
        columns[first] = np.where(better, crossed_first, columns[first]).astype(np.int8)
        columns[second] = np.where(better, crossed_second, columns[second]).astype(np.int8)
    for field, column in columns.items():
        vectors[:, FIELD_INDEX[field]] = column
    vectors[:, FIELD_INDEX["identifiers"]] = [
        _identifier_level(a, b) for a, b in zip(*values["identifiers"], strict=True)
    ]
    return vectors


def _values(records: Sequence[NormalisedRecord], field: str) -> list[Any]:
    return list(map(attrgetter(field), records))


def _column(kind: Kind, a: list[str], b: list[str]) -> Levels:
    if kind is Kind.TEXT:
        return _text_levels(a, b)
    if kind is Kind.EXACT:
        return _exact_levels(a, b)
    return _near_levels(a, b, dates=kind is Kind.DATE)


def _present(a: Sequence[str], b: Sequence[str]) -> npt.NDArray[np.bool_]:
    # map() over C functions: a Python generator here cost more than the string distances.
    return np.fromiter(map(operator.and_, map(bool, a), map(bool, b)), dtype=bool, count=len(a))


def _equal(a: Sequence[str], b: Sequence[str]) -> npt.NDArray[np.bool_]:
    return np.fromiter(map(operator.eq, a, b), dtype=bool, count=len(a))


def _text_levels(a: Sequence[str], b: Sequence[str]) -> Levels:
    similarity = process.cpdist(a, b, scorer=JaroWinkler.normalized_similarity, dtype=np.float32)
    levels = np.select([_equal(a, b), similarity >= 0.92, similarity >= 0.80], [0, 1, 2], default=3).astype(
        np.int8
    )
    return np.where(_present(a, b), levels, MISSING).astype(np.int8)


def _exact_levels(a: Sequence[str], b: Sequence[str]) -> Levels:
    levels = np.where(_equal(a, b), 0, 1).astype(np.int8)
    return np.where(_present(a, b), levels, MISSING).astype(np.int8)


def _near_levels(a: Sequence[str], b: Sequence[str], *, dates: bool) -> Levels:
    distance = process.cpdist(a, b, scorer=OSA.distance, dtype=np.int32)
    near = distance <= 1
    if dates:
        near |= np.fromiter(
            (
                len(x) == 8 and x[:4] == y[:4] and x[4:6] == y[6:8] and x[6:8] == y[4:6]
                for x, y in zip(a, b, strict=True)
            ),
            dtype=bool,
            count=len(a),
        )
    levels = np.select([_equal(a, b), near], [0, 1], default=2).astype(np.int8)
    return np.where(_present(a, b), levels, MISSING).astype(np.int8)


def _badness(levels: Levels) -> npt.NDArray[np.int16]:
    """How far from agreeing a column is (missing counts as the worst), to choose straight or crossed."""
    return np.where(levels == MISSING, 4, levels).astype(np.int16)


def _identifier_level(a: frozenset[str], b: frozenset[str]) -> int:
    if not a or not b:
        return MISSING
    if a & b:
        return 0
    shared_types = {i.split(":", 1)[0] for i in a} & {i.split(":", 1)[0] for i in b}
    return 1 if shared_types else MISSING


def describe(vector: Sequence[int]) -> dict[str, str]:
    """A comparison vector as {field: level name}, leaving out missing fields."""
    return {
        c.field: c.levels[level] for c, level in zip(COMPARISONS, vector, strict=True) if level != MISSING
    }
