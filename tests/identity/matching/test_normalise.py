"""Normalisation of names, addresses, codes and dates (pure)."""

from __future__ import annotations

from datetime import date

import pytest

from omni_identity.matching.normalise import (
    date_key,
    fold,
    normalise_address,
    normalise_code,
    normalise_name,
    normalise_record,
    normalise_state,
)
from omni_identity.matching.records import Identifier, PersonRecord


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Zoë  ", "zoe"),
        ("José-María", "jose maria"),
        ("O'Brien", "obrien"),
        ("O\u2019Brien", "obrien"),
        ("Dr. Ann", "ann"),
        ("Mrs  Mary   Smith", "mary smith"),
        ("Dr", "dr"),
        ("", ""),
        ("!!!", ""),
    ],
)
def test_names_fold_accents_punctuation_and_titles(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12 Stanley St.", "12 stanley street"),
        ("Stanley St", "stanley street"),
        ("St Kilda", "st kilda"),
        ("Pinkerton Cct", "pinkerton circuit"),
        ("Main Rd, Unit 4", "main road unit 4"),
        ("  Salkauskas   CRES ", "salkauskas crescent"),
        ("", ""),
    ],
)
def test_addresses_spell_out_street_types_after_the_first_word(raw: str, expected: str) -> None:
    assert normalise_address(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sw1a 1aa", "SW1A1AA"),
        (" 4223 ", "4223"),
        ("12-a", "12A"),
        ("\uff12\uff10\uff10\uff10", "2000"),
        ("", ""),
    ],
)
def test_codes_keep_letters_and_digits(raw: str, expected: str) -> None:
    assert normalise_code(raw) == expected


def test_states_lose_dots_and_spaces() -> None:
    assert normalise_state("N.S.W.") == "nsw"
    assert normalise_state(" Vic ") == "vic"


def test_dates_become_yyyymmdd() -> None:
    assert date_key(date(1915, 11, 1)) == "19151101"
    assert date_key(None) == ""


def test_fold_collapses_whitespace() -> None:
    assert fold("  A\tb\n C ") == "a b c"


def test_a_record_is_normalised_field_by_field() -> None:
    record = normalise_record(
        PersonRecord(
            given_name="Michaela",
            surname="Neumann",
            date_of_birth=date(1915, 11, 11),
            street_number="8",
            address_1="Stanley St",
            suburb="Winston Hills",
            postcode="4223",
            state="NSW",
            identifiers=(Identifier("email", "m@example.com"),),
        )
    )
    assert record.given_name == "michaela"
    assert record.address_1 == "stanley street"
    assert record.date_of_birth == "19151111"
    assert record.state == "nsw"
    assert record.identifiers == frozenset({"email:m@example.com"})
    assert not record.is_empty


def test_a_record_of_punctuation_only_is_empty() -> None:
    assert normalise_record(PersonRecord(given_name="  ", surname="--", postcode=" ")).is_empty
