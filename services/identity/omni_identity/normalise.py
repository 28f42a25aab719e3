"""Normalising identifiers, so the same customer's values compare equal whichever channel sent them.

Emails are trimmed and lower-cased; phones become E.164 (``+14155550123``) with the ``phonenumbers`` library,
numbers without a leading ``+`` read in the default region; every other type is trimmed. A value that is
malformed, too long, blocked or holding control characters is refused with an IdentifierError naming the offending part ("type" or
"value"), which the transport turns into a field violation.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

import phonenumbers

from omni_identity.identifier_types import IdentifierType, IdentifierTypeRegistry, NormalisationKind
from omni_kit.errors import has_control_characters

# Something@something.tld, no spaces, exactly one @: enough to refuse what is clearly not an address
# without pretending to implement RFC 5322.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_MAX_EMAIL_LENGTH = 254
# Longest input the phone parser is given; phonenumbers itself caps the digits.
_MAX_PHONE_INPUT = 64


class IdentifierKey(NamedTuple):
    """A normalised identifier: the unit the identity graph matches on.

    A tuple, so hashing, comparing and sorting the thousands of keys of a batch run in C; ordered by type,
    then value.
    """

    type: str
    value: str


class IdentifierError(ValueError):
    """A single identifier cannot be used; part says which field is wrong."""

    def __init__(self, part: Literal["type", "value"], description: str) -> None:
        super().__init__(description)
        self.part = part
        self.description = description


class Normaliser:
    """Normalises identifiers against the configured types."""

    def __init__(self, registry: IdentifierTypeRegistry, *, default_phone_region: str = "US") -> None:
        self.registry = registry
        self.default_phone_region = default_phone_region.upper()

    def normalise(self, type_name: str, value: str) -> IdentifierKey:
        """Return the normalised identifier, or raise IdentifierError saying what is wrong."""
        type_name = type_name.strip()
        if not type_name:
            raise IdentifierError("type", "is required")
        identifier_type = self.registry.get(type_name)
        if identifier_type is None:
            raise IdentifierError(
                "type", f"unknown identifier type {type_name[:64]!r}; one of {', '.join(self.registry.names)}"
            )
        normalised = self.normalise_value(identifier_type, value)
        if identifier_type.is_blocked(normalised):
            raise IdentifierError(
                "value", f"{normalised[:64]!r} is a placeholder, not a {type_name}, and is never matched"
            )
        return IdentifierKey(type_name, normalised)

    def normalise_value(self, identifier_type: IdentifierType, value: str) -> str:
        """Normalise a value of a known type (blocked values are not checked here)."""
        value = value.strip()
        if not value:
            raise IdentifierError("value", "is required")
        if has_control_characters(value):
            raise IdentifierError("value", "holds control characters")
        if identifier_type.kind is NormalisationKind.EMAIL:
            normalised = normalise_email(value)
        elif identifier_type.kind is NormalisationKind.PHONE:
            normalised = normalise_phone(value, self.default_phone_region)
        else:
            normalised = value
        if len(normalised) > identifier_type.max_length:
            raise IdentifierError("value", f"is longer than {identifier_type.max_length} characters")
        return normalised


def normalise_email(value: str) -> str:
    """Trim and lower-case an email address, refusing what does not look like one."""
    email = value.strip().lower()
    if len(email) > _MAX_EMAIL_LENGTH:
        raise IdentifierError("value", f"is longer than {_MAX_EMAIL_LENGTH} characters")
    if not _EMAIL.fullmatch(email):
        raise IdentifierError("value", "is not an email address")
    return email


def normalise_phone(value: str, default_region: str) -> str:
    """Return the phone number in E.164, reading numbers without a leading + in default_region."""
    text = value.strip()
    if len(text) > _MAX_PHONE_INPUT:
        raise IdentifierError("value", f"is longer than {_MAX_PHONE_INPUT} characters")
    region = None if text.startswith("+") else default_region
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as error:
        raise IdentifierError("value", f"is not a phone number ({error._msg})") from error
    if not phonenumbers.is_valid_number(number):
        raise IdentifierError("value", "is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
