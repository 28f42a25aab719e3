"""Phonetic codes and blocking keys (pure)."""

from __future__ import annotations

import pytest

from omni_identity.matching.blocking import blocking_keys, candidate_pairs
from omni_identity.matching.phonetic import soundex
from omni_identity.matching.records import NormalisedRecord


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("robert", "r163"),
        ("rupert", "r163"),
        ("ashcraft", "a261"),
        ("tymczak", "t522"),
        ("pfister", "p236"),
        ("honeyman", "h555"),
        ("lee", "l000"),
        ("", ""),
        ("123", ""),
    ],
)
def test_soundex(name: str, code: str) -> None:
    assert soundex(name) == code


def test_names_that_sound_alike_share_a_code() -> None:
    assert soundex("meyer") == soundex("maier") == soundex("myer")


RECORD = NormalisedRecord(
    given_name="michaela",
    surname="neumann",
    date_of_birth="19151111",
    street_number="8",
    address_1="stanley street",
    suburb="winston hills",
    postcode="4223",
    identifiers=frozenset({"email:m@example.com"}),
)


def test_a_full_record_files_under_every_key() -> None:
    assert blocking_keys(RECORD) == sorted(
        [
            "pc:4223",
            "sy:n550:1915",
            "gd:mi:19151111",
            "sg:m240:n550",
            "an:8:stanley",
            "ds:19151111:winston",
            "da:19151111:stan",
            "as:stan:win",
            "ny:macal:nanan",
            "pp:2234:1915",
            "mp:nmn:42",
            "gm:mxl:191511",
            "id:email:m@example.com",
        ]
    )


def _shared(left: NormalisedRecord, right: NormalisedRecord) -> set[str]:
    return set(blocking_keys(left)) & set(blocking_keys(right))


def test_a_new_name_and_a_postcode_with_two_digits_swapped_still_share_keys() -> None:
    # FEBRL3's rec-85: the names replaced, the street run together, the postcode's digits swapped.
    moved = NormalisedRecord(
        given_name="kiera",
        surname="green",
        date_of_birth="19151111",
        address_1="stanleystreet",
        suburb="winstonhills",
        postcode="4232",
    )
    assert _shared(RECORD, moved) == {"da:19151111:stan", "as:stan:win", "pp:2234:1915"}


def test_names_misspelt_past_soundex_share_the_nysiis_key() -> None:
    misspelt = NormalisedRecord(given_name="mikaela", surname="noiman", date_of_birth="19700101")
    assert "ny:macal:nanan" in _shared(RECORD, misspelt)


def test_a_neighbouring_postcode_shares_its_prefix_with_the_surname() -> None:
    neighbour = NormalisedRecord(surname="neuman", postcode="4229")
    assert _shared(RECORD, neighbour) == {"mp:nmn:42"}


def test_missing_parts_leave_their_keys_out() -> None:
    assert blocking_keys(NormalisedRecord(surname="neumann")) == []
    assert blocking_keys(NormalisedRecord(surname="neumann", date_of_birth="19151111")) == ["sy:n550:1915"]


def test_swapped_names_share_the_name_key() -> None:
    swapped = NormalisedRecord(given_name="neumann", surname="michaela")
    assert "sg:m240:n550" in blocking_keys(swapped)


def test_candidates_are_the_union_over_keys() -> None:
    left = [["pc:1", "sy:a"], ["pc:2"]]
    right = [["pc:1"], ["sy:a"], ["pc:3"], ["pc:2", "sy:a"]]
    assert candidate_pairs(left, right) == {(0, 0), (0, 1), (0, 3), (1, 3)}


def test_oversized_blocks_are_skipped() -> None:
    left = [["pc:1", "sy:a"]]
    right = [["pc:1"]] * 4 + [["sy:a"]]
    assert candidate_pairs(left, right, max_block=3) == {(0, 4)}
