"""Identifier types are configuration, not code: which types exist, how each is normalised, what never matches.

A type names a normalisation kind ("email", "phone" or "opaque") and carries its own blocked values: values
that real systems emit when they have no identifier ("null", "undefined", "0", "anonymous" …) and that would
fuse strangers into one person if they were used to match. Blocked values are compared after normalisation
and case-insensitively; blocked patterns are regular expressions matched against the whole normalised value.

The registry is built once from settings (``Settings.identifier_types``) and passed to whoever needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

MAX_VALUE_LENGTH = 256
"""The longest normalised identifier value any type accepts."""


class NormalisationKind(StrEnum):
    """How the values of a type are normalised before they are stored or matched."""

    EMAIL = "email"
    PHONE = "phone"
    OPAQUE = "opaque"


# What tracking libraries, forms and point-of-sale systems send when they have no value to send.
COMMON_BLOCKED_VALUES: tuple[str, ...] = (
    "",
    "null",
    "nil",
    "none",
    "undefined",
    "nan",
    "unknown",
    "anonymous",
    "anon",
    "guest",
    "n/a",
    "na",
    "0",
    "-1",
    "[object object]",
    "{}",
    "[]",
    "false",
    "true",
    "test",
    "00000000-0000-0000-0000-000000000000",
)

# Only zeros (e.g. "0000", "000-000") or only one repeated dash or dot.
COMMON_BLOCKED_PATTERNS: tuple[str, ...] = (r"[0\-\s.]+", r"-+", r"\.+")

EMAIL_BLOCKED_VALUES: tuple[str, ...] = (
    "test@test.com",
    "null@null.com",
    "none@none.com",
    "noemail@noemail.com",
    "no@email.com",
    "email@email.com",
)

EMAIL_BLOCKED_PATTERNS: tuple[str, ...] = (r"(no-?reply|do-?not-?reply)@.*",)


class IdentifierTypeConfig(BaseModel):
    """One identifier type as configured (settings accept a JSON list of these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="The type as clients send it.")
    kind: NormalisationKind = Field(
        default=NormalisationKind.OPAQUE, description="How values are normalised."
    )
    blocked_values: tuple[str, ...] = Field(
        default=COMMON_BLOCKED_VALUES, description="Values never used to match, compared case-insensitively."
    )
    blocked_patterns: tuple[str, ...] = Field(
        default=COMMON_BLOCKED_PATTERNS,
        description="Regular expressions; a value they fully match is blocked.",
    )
    max_length: int = Field(
        default=MAX_VALUE_LENGTH, ge=1, le=MAX_VALUE_LENGTH, description="Longest value, in characters."
    )


def default_identifier_types() -> tuple[IdentifierTypeConfig, ...]:
    """The types Omni ships with: email, phone and the opaque ids channels carry."""
    opaque = (
        "anonymous_id",
        "device_id",
        "user_id",
        "loyalty_card",
        "pos_customer_id",
        "push_token",
    )
    return (
        IdentifierTypeConfig(
            name="email",
            kind=NormalisationKind.EMAIL,
            blocked_values=COMMON_BLOCKED_VALUES + EMAIL_BLOCKED_VALUES,
            blocked_patterns=EMAIL_BLOCKED_PATTERNS,
        ),
        IdentifierTypeConfig(name="phone", kind=NormalisationKind.PHONE),
        *(IdentifierTypeConfig(name=name) for name in opaque),
    )


@dataclass(frozen=True)
class IdentifierType:
    """A configured identifier type, ready to check values against."""

    name: str
    kind: NormalisationKind
    blocked_values: frozenset[str]
    blocked_pattern: re.Pattern[str] | None
    """All blocked patterns as one alternation, so a value is checked in one regex run."""
    max_length: int

    @classmethod
    def from_config(cls, config: IdentifierTypeConfig) -> IdentifierType:
        """Compile a configured type."""
        return cls(
            name=config.name,
            kind=config.kind,
            blocked_values=frozenset(v.strip().casefold() for v in config.blocked_values),
            blocked_pattern=(
                re.compile("|".join(f"(?:{p})" for p in config.blocked_patterns), re.IGNORECASE)
                if config.blocked_patterns
                else None
            ),
            max_length=config.max_length,
        )

    def is_blocked(self, normalised: str) -> bool:
        """True when a normalised value must never be used to match."""
        folded = normalised.casefold()
        if folded in self.blocked_values:
            return True
        return self.blocked_pattern is not None and self.blocked_pattern.fullmatch(folded) is not None


class IdentifierTypeRegistry:
    """The identifier types a deployment accepts, by name."""

    def __init__(self, configs: Iterable[IdentifierTypeConfig]) -> None:
        self._types: dict[str, IdentifierType] = {}
        for config in configs:
            if config.name in self._types:
                raise ValueError(f"identifier type {config.name!r} is configured twice")
            self._types[config.name] = IdentifierType.from_config(config)

    @classmethod
    def defaults(cls) -> IdentifierTypeRegistry:
        """The registry of the default types."""
        return cls(default_identifier_types())

    def get(self, name: str) -> IdentifierType | None:
        """The type called name, or None when it is not configured."""
        return self._types.get(name)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """The configured type names, sorted."""
        return tuple(sorted(self._types))

    def as_mapping(self) -> Mapping[str, IdentifierType]:
        """The types by name (read-only view)."""
        return dict(self._types)
