"""The records the matcher compares: a person's details as a channel gave them, and their normalised form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

# The compared fields of a record, in the order of a comparison vector's string and code fields.
NAME_FIELDS = ("given_name", "surname")
ADDRESS_FIELDS = ("address_1", "address_2", "suburb")
CODE_FIELDS = ("street_number", "postcode")
TEXT_FIELDS = (*NAME_FIELDS, "street_number", *ADDRESS_FIELDS, "postcode", "state")


@dataclass(frozen=True)
class Identifier:
    """An identifier the record carries (email, phone…), already normalised by the identity graph's rules."""

    type: str
    value: str


@dataclass(frozen=True)
class PersonRecord:
    """A person's details as one channel gave them; any field may be empty."""

    given_name: str = ""
    surname: str = ""
    date_of_birth: date | None = None
    street_number: str = ""
    address_1: str = ""
    address_2: str = ""
    suburb: str = ""
    postcode: str = ""
    state: str = ""
    identifiers: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class NormalisedRecord:
    """A record in the form the matcher blocks and compares on: empty strings for missing values.

    date_of_birth is "YYYYMMDD" so that near-misses (one digit off, swapped digits) compare as strings.
    identifiers holds "type:value" strings.
    """

    given_name: str = ""
    surname: str = ""
    date_of_birth: str = ""
    street_number: str = ""
    address_1: str = ""
    address_2: str = ""
    suburb: str = ""
    postcode: str = ""
    state: str = ""
    identifiers: frozenset[str] = field(default_factory=frozenset)

    def value(self, name: str) -> str:
        """The normalised value of a text field (or the date of birth) by name."""
        value = getattr(self, name)
        assert isinstance(value, str)
        return value

    @property
    def is_empty(self) -> bool:
        """True when the record holds nothing to match on."""
        return not self.identifiers and not any(self.value(f) for f in (*TEXT_FIELDS, "date_of_birth"))
