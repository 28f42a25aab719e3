"""Identifier types are configuration, not code: which types exist, how each is normalised and trusted.

A type names a normalisation kind ("email", "phone" or "opaque") and carries its own blocked values: values
that real systems emit when they have no identifier ("null", "undefined", "0", "anonymous" …) and that would
fuse strangers into one person if they were used to match. Blocked values are compared after normalisation
and case-insensitively; blocked patterns are regular expressions matched against the whole normalised value.

It also carries the rules that keep strangers apart (applied by rules.py): a trust level, a limit of how
many values of the type one person may hold (optionally counting only values attached within a window),
and a priority saying which identifier is set aside first when a rule refuses a link.

The registry is built once from settings (``Settings.identifier_types``) and passed to whoever needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_VALUE_LENGTH = 256
"""The longest normalised identifier value any type accepts, but a Web Push subscription."""

MAX_SUBSCRIPTION_LENGTH = 1024
"""The longest normalised Web Push subscription (its JSON): an endpoint URL of push services in use is under
300 characters, the keys take about 130."""


class NormalisationKind(StrEnum):
    """How the values of a type are normalised before they are stored or matched."""

    EMAIL = "email"
    PHONE = "phone"
    OPAQUE = "opaque"
    WEB_PUSH_SUBSCRIPTION = "web_push_subscription"
    """A browser's PushSubscription as JSON (endpoint and keys p256dh, auth), checked and stored canonical."""


class Trust(StrEnum):
    """How surely one value of a type means one person.

    high: an account or card that identifies one person (user id, loyalty card, POS customer id);
    medium: usually one person, sometimes shared or mistyped (email, phone);
    low: a browser, device or app install that several people may use (cookie, device id, push token).
    Low-trust identifiers find and extend persons, but never on their own link a person holding a
    high-trust identifier to another person or new identifier carrying a different high-trust one.
    """

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


DEFAULT_PRIORITY = 100

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

# Senders' own addresses, testers' addresses (test@…, test123@…), and domains that can never receive mail:
# the top-level domains reserved for testing and documentation (RFC 2606, RFC 6761).
EMAIL_BLOCKED_PATTERNS: tuple[str, ...] = (
    r"(no-?reply|do-?not-?reply)@.*",
    r"test[0-9]*@.*",
    r".*@(.+\.)?(test|invalid|localhost)",
)


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
        default=MAX_VALUE_LENGTH,
        ge=1,
        le=MAX_SUBSCRIPTION_LENGTH,
        description=f"Longest normalised value, in characters: at most {MAX_VALUE_LENGTH}, or "
        f"{MAX_SUBSCRIPTION_LENGTH} (the default) for a Web Push subscription.",
    )
    trust: Trust = Field(default=Trust.MEDIUM, description="high, medium or low (see Trust).")
    priority: int = Field(
        default=DEFAULT_PRIORITY,
        ge=1,
        le=1000,
        description="When a rule refuses a link, the identifier with the largest number is set aside first.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most values of this type one person may hold; null: no limit.",
    )
    limit_window: timedelta | None = Field(
        default=None,
        description='Only values attached within this window count towards limit (ISO 8601, e.g. "P7D").',
    )

    record_matching: bool = Field(
        default=True,
        description="Whether records given to probabilistic matching may carry this type; false for "
        "addresses that say nothing of who a person is (a Web Push subscription).",
    )

    @model_validator(mode="before")
    @classmethod
    def _subscription_defaults(cls, data: object) -> object:
        # A subscription's JSON is longer than any other identifier: its own default length.
        if (
            isinstance(data, dict)
            and data.get("kind") == NormalisationKind.WEB_PUSH_SUBSCRIPTION
            and "max_length" not in data
        ):
            return {**data, "max_length": MAX_SUBSCRIPTION_LENGTH}
        return data

    @model_validator(mode="after")
    def _length_within_the_kind(self) -> IdentifierTypeConfig:
        if self.kind is not NormalisationKind.WEB_PUSH_SUBSCRIPTION and self.max_length > MAX_VALUE_LENGTH:
            raise ValueError(f"max_length is at most {MAX_VALUE_LENGTH} for kind {self.kind.value}")
        return self

    @model_validator(mode="after")
    def _window_needs_a_limit(self) -> IdentifierTypeConfig:
        if self.limit_window is not None:
            if self.limit is None:
                raise ValueError("limit_window needs a limit")
            if self.limit_window <= timedelta(0):
                raise ValueError("limit_window must be positive")
        return self


def default_identifier_types() -> tuple[IdentifierTypeConfig, ...]:
    """The types Omni ships with, strongest first: accounts and cards, then email and phone, then devices.

    At most one user id per person ever (two accounts are two people until an operator says otherwise), a
    few loyalty cards, POS ids, emails and phones; devices, push tokens and cookies are cheap to make and
    shared, so they are low-trust, counted over a recent window and set aside first.
    """
    week, month = timedelta(days=7), timedelta(days=30)

    def opaque(
        name: str, trust: Trust, priority: int, limit: int, window: timedelta | None = None
    ) -> IdentifierTypeConfig:
        return IdentifierTypeConfig(
            name=name, trust=trust, priority=priority, limit=limit, limit_window=window
        )

    return (
        opaque("user_id", Trust.HIGH, 10, 1),
        opaque("loyalty_card", Trust.HIGH, 20, 3),
        opaque("pos_customer_id", Trust.HIGH, 30, 5),
        IdentifierTypeConfig(
            name="email",
            kind=NormalisationKind.EMAIL,
            blocked_values=COMMON_BLOCKED_VALUES + EMAIL_BLOCKED_VALUES,
            blocked_patterns=EMAIL_BLOCKED_PATTERNS,
            trust=Trust.MEDIUM,
            priority=40,
            limit=5,
        ),
        IdentifierTypeConfig(
            name="phone", kind=NormalisationKind.PHONE, trust=Trust.MEDIUM, priority=50, limit=5
        ),
        opaque("push_token", Trust.LOW, 60, 10, month),
        # A browser's Web Push subscription, stored whole (the gateway delivers to it). Low trust like a
        # device; never a clue for probabilistic matching, and no placeholders to block (a placeholder is
        # no valid subscription).
        IdentifierTypeConfig(
            name="web_push_subscription",
            kind=NormalisationKind.WEB_PUSH_SUBSCRIPTION,
            blocked_values=(),
            blocked_patterns=(),
            trust=Trust.LOW,
            priority=65,
            limit=10,
            limit_window=month,
            record_matching=False,
        ),
        opaque("device_id", Trust.LOW, 70, 10, month),
        opaque("anonymous_id", Trust.LOW, 80, 5, week),
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
    trust: Trust = Trust.MEDIUM
    priority: int = DEFAULT_PRIORITY
    limit: int | None = None
    limit_window: timedelta | None = None
    record_matching: bool = True

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
            trust=config.trust,
            priority=config.priority,
            limit=config.limit,
            limit_window=config.limit_window,
            record_matching=config.record_matching,
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

    @cached_property
    def watched(self) -> frozenset[str]:
        """The types whose values are counted per person: those with a limit, and the high-trust ones."""
        return frozenset(
            name for name, t in self._types.items() if t.limit is not None or t.trust is Trust.HIGH
        )

    def as_mapping(self) -> Mapping[str, IdentifierType]:
        """The types by name (read-only view)."""
        return dict(self._types)
