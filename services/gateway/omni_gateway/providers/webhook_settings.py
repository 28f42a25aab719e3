"""The webhook provider's settings: the destinations (the retailer's endpoints) and how they are called.

Validated when the gateway starts, so a bad destination stops the start with an error naming it (a URL that
is not http(s), plain http to a host that is not this machine, a secret that is not `whsec_` + base64 of 24
to 64 bytes, the same name twice) rather than failing every message later.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator

__all__ = [
    "DEFAULT_RETRY_SCHEDULE_S",
    "MAX_PAYLOAD_BYTES",
    "WebhookDestination",
    "WebhookSettings",
    "secret_key",
]

DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
"""The waits between attempts (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h): Svix's schedule, which the
Standard Webhooks specification follows; eight attempts, the last 27 h 35 min after the first."""

MAX_PAYLOAD_BYTES = 256 * 1024
"""The largest body a destination is sent unless it says otherwise (Svix's and GitHub's caps are of this
order; an endpoint behind a proxy often refuses more)."""

_SECRET_PREFIX = "whsec_"
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_LOOPBACK_NAMES = frozenset({"localhost"})


def secret_key(secret: str) -> bytes:
    """The key of a `whsec_` secret (base64 after the prefix, padding optional), checked: 24 to 64 bytes, as
    the Standard Webhooks specification asks. Raises ValueError naming what is wrong (never the secret)."""
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError(f"a secret starts with {_SECRET_PREFIX!r} (Standard Webhooks)")
    encoded = secret[len(_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a secret is {_SECRET_PREFIX!r} followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a secret's key is 24 to 64 bytes (this one is {len(key)})")
    return key


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebhookDestination(BaseModel):
    """One endpoint of the retailer's: where its messages go and the secrets they are signed with."""

    # An error is logged at start: it must not show the secrets it was given.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(
        pattern=_NAME,
        description="The destination's name, the address of its messages (1 to 64 of a-z, 0-9, '-', '_').",
    )
    url: HttpUrl = Field(description="Where messages are POSTed; https, or http to this machine only.")
    secrets: Annotated[list[SecretStr], Field(min_length=1, max_length=2)] = Field(
        description="The active signing secrets (`whsec_` + base64 of 24 to 64 bytes): one, or two while "
        "rotating (every message is signed with both, so the receiver verifies with either)."
    )
    timeout_s: float = Field(10.0, gt=0, le=60, description="The whole call, connecting to the last byte.")
    rate_per_s: float | None = Field(
        None, gt=0, le=10_000, description="Most messages a second to this endpoint; none: no limit."
    )
    max_connections: int = Field(10, ge=1, le=200, description="Connections kept open to it, at most.")
    max_payload_bytes: int = Field(
        MAX_PAYLOAD_BYTES, ge=1024, le=4 * 1024 * 1024, description="Largest body; a bigger one fails."
    )
    allow_http: bool = Field(
        False, description="Allow plain http to a host other than this machine (a cluster-internal service)."
    )

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for index, secret in enumerate(secrets):
            try:
                secret_key(secret.get_secret_value())
            except ValueError as error:
                raise ValueError(f"secrets[{index}]: {error}") from None
        if len({s.get_secret_value() for s in secrets}) != len(secrets):
            raise ValueError("the two secrets are the same")
        return secrets

    @model_validator(mode="after")
    def _https_unless_local(self) -> Self:
        host = self.url.host or ""
        if self.url.scheme == "http" and not self.allow_http and not _is_loopback(host):
            raise ValueError(
                f"url: plain http to {host} would send signed personal data in the clear; use https "
                "(or set allow_http for a cluster-internal endpoint)"
            )
        if self.url.username or self.url.password:
            raise ValueError("url: no credentials in the URL; the signature authenticates the sender")
        return self


class WebhookSettings(BaseModel):
    """The webhook provider's settings (the gateway's `OMNI_GATEWAY_WEBHOOK`, a JSON object, from a secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    destinations: list[WebhookDestination] = Field(
        default_factory=list, max_length=100, description="The endpoints; none: no webhook delivery."
    )
    default_destination: str | None = Field(
        None,
        description="The destination of a message that names none (address_of); defaults to the only one "
        "when there is exactly one.",
    )
    retry_schedule_s: tuple[float, ...] = Field(
        DEFAULT_RETRY_SCHEDULE_S,
        min_length=1,
        max_length=20,
        description="Waits between attempts; its length + 1 attempts in all. The delivery flow's retry "
        "policy reads it (WebhookProvider.retry_schedule).",
    )
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="Failures in a row that open a destination's circuit."
    )
    breaker_reset_s: float = Field(
        30.0, gt=0, le=3600, description="How long an opened circuit refuses before a trial call."
    )
    rate_wait_s: float = Field(
        1.0, ge=0, le=60, description="How long a send waits for its destination's rate before failing over."
    )
    user_agent: str = Field("omni-gateway", max_length=200, pattern=r"^[\x20-\x7e]*$")

    @field_validator("retry_schedule_s")
    @classmethod
    def _positive_waits(cls, waits: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < wait <= 86_400 for wait in waits):
            raise ValueError("every wait is more than 0 and at most a day (86400 s)")
        return waits

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [d.name for d in self.destinations]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"destinations: the name {', '.join(map(repr, repeated))} is used twice")
        if self.default_destination is not None and self.default_destination not in names:
            raise ValueError(
                f"default_destination: {self.default_destination!r} is none of the destinations "
                f"({', '.join(map(repr, names)) or 'none configured'})"
            )
        return self

    @property
    def fallback_destination(self) -> str | None:
        """Where a message naming no destination goes: the default, or the only destination."""
        if self.default_destination is not None:
            return self.default_destination
        return self.destinations[0].name if len(self.destinations) == 1 else None
