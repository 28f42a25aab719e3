"""What an agent types into the search box, read as the identifiers it may be: an email, a phone number (in
national format too, read in the console's default region), a loyalty card, a user id or a person id."""

from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass

import phonenumbers

KINDS = ("auto", "email", "phone", "loyalty_card", "user_id", "person_id")
"""What the search box may be told the text is; "auto" guesses."""

_PHONE_CHARACTERS = re.compile(r"^\+?[\d\s().\-/]{6,}$")


class QueryError(ValueError):
    """The text cannot be the kind of identifier asked for; the message says why, for the page."""


@dataclass(frozen=True)
class Candidate:
    """One way to find the person: by person id, or by an identifier (type and normalised value)."""

    type: str
    value: str

    @property
    def is_person_id(self) -> bool:
        """Whether this names the person directly."""
        return self.type == "person_id"


def phone_e164(text: str, region: str) -> str:
    """The number in E.164, reading a national format in ``region``; QueryError when it is no number."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as error:
        raise QueryError(f"not a phone number: {error}") from error
    if not phonenumbers.is_valid_number(number):
        raise QueryError(f"not a valid phone number (read in region {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def candidates(text: str, kind: str, region: str) -> list[Candidate]:
    """The identifiers to look the text up by, most likely first; QueryError when none can be."""
    text = text.strip()
    if not text:
        raise QueryError("type an email, a phone number, a loyalty card, a user id or a person id")
    if kind not in KINDS:
        raise QueryError(f"unknown kind {kind!r}")
    if kind == "person_id" or (kind == "auto" and _is_uuid(text)):
        if not _is_uuid(text):
            raise QueryError("a person id is a UUID")
        return [Candidate("person_id", str(uuid.UUID(text)))]
    if kind == "email" or (kind == "auto" and "@" in text):
        if "@" not in text:
            raise QueryError("an email holds an @")
        return [Candidate("email", text.lower())]
    if kind == "phone":
        return [Candidate("phone", phone_e164(text, region))]
    if kind in ("loyalty_card", "user_id"):
        return [Candidate(kind, text)]
    found: list[Candidate] = []
    if _PHONE_CHARACTERS.match(text):
        with contextlib.suppress(QueryError):
            found.append(Candidate("phone", phone_e164(text, region)))
    found += [Candidate("loyalty_card", text), Candidate("user_id", text)]
    return found


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
