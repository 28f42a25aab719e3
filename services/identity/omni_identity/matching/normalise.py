"""Normalising names, addresses, dates and postcodes, so that the same person's details compare equal.

Text is lower-cased and stripped of accents and punctuation; street types are spelt out ("St" → "street")
so that abbreviations do not look like typos; postcodes keep their letters and digits, upper-cased.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from omni_identity.matching.records import NormalisedRecord, PersonRecord

_NOT_WORD = re.compile(r"[^a-z0-9 ]+")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_SPACES = re.compile(r"\s+")
# Apostrophes join (o'brien → obrien); other punctuation separates words (smith-jones → smith jones).
_APOSTROPHES = re.compile("['\u2019`\u00b4]")

_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "rev"})

STREET_TYPES = {
    "st": "street",
    "str": "street",
    "rd": "road",
    "ave": "avenue",
    "av": "avenue",
    "cres": "crescent",
    "cr": "crescent",
    "crs": "crescent",
    "ct": "court",
    "crt": "court",
    "pl": "place",
    "dr": "drive",
    "drv": "drive",
    "ln": "lane",
    "hwy": "highway",
    "pde": "parade",
    "tce": "terrace",
    "ter": "terrace",
    "cct": "circuit",
    "cl": "close",
    "blvd": "boulevard",
    "sq": "square",
    "gr": "grove",
    "pkwy": "parkway",
    "cir": "circle",
    "esp": "esplanade",
}


def fold(text: str) -> str:
    """Lower-case text without accents, punctuation or repeated spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    ascii_text = _APOSTROPHES.sub("", ascii_text)
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", ascii_text)).strip()


def normalise_name(name: str) -> str:
    """A given name or surname, folded, without a leading title ("Dr. Ann" → "ann")."""
    words = fold(name).split()
    while len(words) > 1 and words[0] in _TITLES:
        words.pop(0)
    return " ".join(words)


def normalise_address(line: str) -> str:
    """An address line or place name, folded, with street types spelt out after the first word."""
    words = fold(line).split()
    return " ".join([words[0], *(STREET_TYPES.get(word, word) for word in words[1:])] if words else [])


def normalise_code(code: str) -> str:
    """A postcode or house number: letters and digits only, upper-cased ("sw1a 1aa" → "SW1A1AA")."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", code)).upper()


def normalise_state(state: str) -> str:
    """A state or region, folded and without spaces ("N.S.W." → "nsw")."""
    return fold(state).replace(" ", "")


def date_key(value: date | None) -> str:
    """A date of birth as "YYYYMMDD", or "" when unknown."""
    return "" if value is None else f"{value.year:04d}{value.month:02d}{value.day:02d}"


def normalise_record(record: PersonRecord) -> NormalisedRecord:
    """The record's normalised form, the one the matcher blocks, compares and stores."""
    return NormalisedRecord(
        given_name=normalise_name(record.given_name),
        surname=normalise_name(record.surname),
        date_of_birth=date_key(record.date_of_birth),
        street_number=normalise_code(record.street_number),
        address_1=normalise_address(record.address_1),
        address_2=normalise_address(record.address_2),
        suburb=normalise_address(record.suburb),
        postcode=normalise_code(record.postcode),
        state=normalise_state(record.state),
        identifiers=frozenset(f"{i.type}:{i.value}" for i in record.identifiers),
    )
