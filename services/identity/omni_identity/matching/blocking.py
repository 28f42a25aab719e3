"""Blocking: the few keys under which a record is filed, so that a new record is only compared with records
that share at least one of them (the candidates are the union over its keys).

Each key tolerates different mistakes, so a true match is lost only when every key is broken at once:

- ``pc``  postcode;
- ``sy``  surname's Soundex code and year of birth (typos in the surname, a wrong postcode);
- ``gd``  the first two letters of the given name and the full date of birth (a moved person);
- ``sg``  Soundex of surname and of given name, in either order (a wrong date and postcode, swapped names);
- ``ds``  date of birth and the first word of the suburb (a new name, a wrong postcode);
- ``an``  house number and the first word of the street (a new surname, a typo'd date);
- ``da``  date of birth and the street's first four letters, spaces left out (new names and postcode);
- ``as``  the street's first four letters and the suburb's first three (new names, date and postcode);
- ``ny``  NYSIIS codes of both names, in either order (names misspelt past Soundex, a new date);
- ``pp``  the postcode's digits in order and the year of birth (two digits of the postcode swapped);
- ``mp``  Metaphone of the surname and the postcode's first two characters (a neighbouring postcode);
- ``gm``  Metaphone of the given name and the year and month of birth (a typo'd day, a move);
- ``id``  each identifier the record carries.

Keys are computed when a record is filed and kept with it: a kind of key added later finds the records
filed since (a record filed before is still found through its other keys).
"""

from __future__ import annotations

import jellyfish

from omni_identity.matching.phonetic import soundex
from omni_identity.matching.records import NormalisedRecord

# The compared fields each kind of key is made of: the pairs a key finds agree (or nearly agree) on them by
# construction, so those fields say nothing about whether such pairs match. Training learns a field's m only
# from pairs found by keys not made of it.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "pc": ("postcode",),
    "sy": ("surname", "date_of_birth"),
    "gd": ("given_name", "date_of_birth"),
    "sg": ("given_name", "surname"),
    "ds": ("date_of_birth", "suburb"),
    "an": ("street_number", "address_1"),
    "da": ("date_of_birth", "address_1"),
    "as": ("address_1", "suburb"),
    "ny": ("given_name", "surname"),
    "pp": ("postcode", "date_of_birth"),
    "mp": ("surname", "postcode"),
    "gm": ("given_name", "date_of_birth"),
    "id": ("identifiers",),
}


def key_kind(key: str) -> str:
    """The kind of a blocking key (its prefix: "pc", "sy", ...)."""
    return key.split(":", 1)[0]


def blocking_keys(record: NormalisedRecord) -> list[str]:
    """The record's blocking keys, sorted; parts that are missing leave their key out."""
    keys: set[str] = set()
    surname_code = soundex(record.surname)
    given_code = soundex(record.given_name)
    year = record.date_of_birth[:4]
    if record.postcode:
        keys.add(f"pc:{record.postcode}")
    if surname_code and year:
        keys.add(f"sy:{surname_code}:{year}")
    if len(record.given_name) >= 2 and record.date_of_birth:
        keys.add(f"gd:{record.given_name[:2]}:{record.date_of_birth}")
    if surname_code and given_code:
        # Sorted, so that a record with given name and surname swapped files under the same key.
        first, second = sorted((surname_code, given_code))
        keys.add(f"sg:{first}:{second}")
    suburb_words = record.suburb.split()
    if record.date_of_birth and suburb_words:
        keys.add(f"ds:{record.date_of_birth}:{suburb_words[0]}")
    street_words = record.address_1.split()
    if record.street_number and street_words:
        keys.add(f"an:{record.street_number}:{street_words[0]}")
    street = record.address_1.replace(" ", "")[:4]
    suburb = record.suburb.replace(" ", "")[:3]
    if record.date_of_birth and street:
        keys.add(f"da:{record.date_of_birth}:{street}")
    if street and suburb:
        keys.add(f"as:{street}:{suburb}")
    if record.surname and record.given_name:
        first, second = sorted((_nysiis(record.surname), _nysiis(record.given_name)))
        keys.add(f"ny:{first}:{second}")
    if record.postcode and year:
        keys.add(f"pp:{''.join(sorted(record.postcode))}:{year}")
    if record.surname and record.postcode:
        keys.add(f"mp:{_metaphone(record.surname)}:{record.postcode[:2]}")
    if record.given_name and len(record.date_of_birth) >= 6:
        keys.add(f"gm:{_metaphone(record.given_name)}:{record.date_of_birth[:6]}")
    keys.update(f"id:{identifier}" for identifier in record.identifiers)
    return sorted(keys)


def _nysiis(name: str) -> str:
    return str(jellyfish.nysiis(name)).lower()


def _metaphone(name: str) -> str:
    return str(jellyfish.metaphone(name)).lower()


def candidate_pairs(
    left: list[list[str]], right: list[list[str]], *, max_block: int = 500
) -> set[tuple[int, int]]:
    """The pairs (i, j) of left and right records sharing a blocking key (the keys of each record given).

    Blocks with more than max_block records on either side are skipped: a key that common (a postcode
    of a whole city) says too little to be worth the comparisons.
    """
    index: dict[str, list[int]] = {}
    for j, keys in enumerate(right):
        for key in keys:
            index.setdefault(key, []).append(j)
    left_sizes: dict[str, int] = {}
    for keys in left:
        for key in keys:
            left_sizes[key] = left_sizes.get(key, 0) + 1
    pairs: set[tuple[int, int]] = set()
    for i, keys in enumerate(left):
        for key in keys:
            block = index.get(key)
            if block is None or len(block) > max_block or left_sizes[key] > max_block:
                continue
            pairs.update((i, j) for j in block)
    return pairs
