"""Agreement levels of record pairs (pure)."""

from __future__ import annotations

import pytest

from omni_identity.matching.comparison import COMPARISONS, FIELD_INDEX, MISSING, compare, describe
from omni_identity.matching.records import NormalisedRecord


def level(field: str, left: NormalisedRecord, right: NormalisedRecord) -> str | None:
    """The level name of one field of one pair (None when missing)."""
    vector = compare([left], [right])[0]
    value = int(vector[FIELD_INDEX[field]])
    return None if value == MISSING else COMPARISONS[FIELD_INDEX[field]].levels[value]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("michaela", "michaela", "exact"),
        ("martha", "marhta", "jaro_winkler_0.92"),
        ("dixon", "dicksonx", "jaro_winkler_0.80"),
        ("michaela", "brendan", "else"),
        ("michaela", "", None),
        ("", "", None),
    ],
)
def test_names(a: str, b: str, expected: str | None) -> None:
    assert level("surname", NormalisedRecord(surname=a), NormalisedRecord(surname=b)) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("4223", "4223", "exact"),
        ("4223", "4224", "near"),
        ("4223", "4232", "near"),
        ("4223", "423", "near"),
        ("4223", "4332", "else"),
        ("4223", "", None),
    ],
)
def test_postcodes(a: str, b: str, expected: str | None) -> None:
    assert level("postcode", NormalisedRecord(postcode=a), NormalisedRecord(postcode=b)) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("19151111", "19151111", "exact"),
        ("19151111", "19151112", "near"),
        ("19150703", "19150730", "near"),
        ("19150307", "19150703", "near"),
        ("19150307", "19620703", "else"),
        ("", "19150307", None),
    ],
)
def test_dates(a: str, b: str, expected: str | None) -> None:
    left, right = NormalisedRecord(date_of_birth=a), NormalisedRecord(date_of_birth=b)
    assert level("date_of_birth", left, right) == expected


def test_state_is_exact_or_not() -> None:
    assert level("state", NormalisedRecord(state="nsw"), NormalisedRecord(state="nsw")) == "exact"
    assert level("state", NormalisedRecord(state="nsw"), NormalisedRecord(state="vic")) == "else"


def test_identifiers_shared_differing_or_not_comparable() -> None:
    ada = NormalisedRecord(identifiers=frozenset({"email:ada@example.com", "phone:+441234"}))
    assert (
        level("identifiers", ada, NormalisedRecord(identifiers=frozenset({"email:ada@example.com"})))
        == "shared"
    )
    assert (
        level("identifiers", ada, NormalisedRecord(identifiers=frozenset({"email:bob@example.com"})))
        == "else"
    )
    # No identifier type in common: nothing can be said.
    assert level("identifiers", ada, NormalisedRecord(identifiers=frozenset({"user_id:7"}))) is None


def test_swapped_given_name_and_surname_compare_crossed() -> None:
    left = NormalisedRecord(given_name="chevonne", surname="simmonds")
    right = NormalisedRecord(given_name="simmonds", surname="chevonne")
    assert describe(compare([left], [right])[0]) == {"given_name": "exact", "surname": "exact"}


def test_swapped_address_lines_compare_crossed() -> None:
    left = NormalisedRecord(address_1="reader court", address_2="villa 2")
    right = NormalisedRecord(address_1="villa 2", address_2="reader court")
    assert describe(compare([left], [right])[0]) == {"address_1": "exact", "address_2": "exact"}


def test_many_pairs_at_once_and_none() -> None:
    records = [NormalisedRecord(surname=name) for name in ("smith", "smyth", "jones")]
    vectors = compare(records, [NormalisedRecord(surname="smith")] * 3)
    assert vectors.shape == (3, len(COMPARISONS))
    assert [describe(v)["surname"] for v in vectors] == ["exact", "jaro_winkler_0.80", "else"]
    assert compare([], []).shape == (0, len(COMPARISONS))
    with pytest.raises(ValueError):
        compare(records, [])
