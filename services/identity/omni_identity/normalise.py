"""Normalising identifiers, so the same customer's values compare equal whichever channel sent them.

Emails are trimmed and lower-cased; phones become E.164 (``+14155550123``) with the ``phonenumbers`` library,
numbers without a leading ``+`` read in the default region; a Web Push subscription is checked and written as
canonical JSON; every other type is trimmed. A value that is
malformed, too long, blocked or holding control characters is refused with an IdentifierError naming the offending part ("type" or
"value"), which the transport turns into a field violation.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import phonenumbers

from omni_identity.identifier_types import IdentifierType, IdentifierTypeRegistry, NormalisationKind
from omni_kit.errors import has_control_characters

# Something@something.tld, no spaces, exactly one @: enough to refuse what is clearly not an address
# without pretending to implement RFC 5322.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_MAX_EMAIL_LENGTH = 254
# Longest input the phone parser is given; phonenumbers itself caps the digits.
_MAX_PHONE_INPUT = 64
# Longest subscription JSON the parser is given (whitespace and fields dropped on the way count here).
_MAX_SUBSCRIPTION_INPUT = 4096
# RFC 8291: the subscription's public key is an uncompressed P-256 point, its auth secret 16 bytes.
_P256DH_BYTES = 65
_AUTH_BYTES = 16


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

    def __init__(
        self,
        registry: IdentifierTypeRegistry,
        *,
        default_phone_region: str = "US",
        web_push_http_loopback: bool = False,
    ) -> None:
        self.registry = registry
        self.default_phone_region = default_phone_region.upper()
        self.web_push_http_loopback = web_push_http_loopback

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

    def normalise_for_record(self, type_name: str, value: str) -> IdentifierKey:
        """Normalise an identifier a record given to probabilistic matching carries: as `normalise`, and
        refusing the types that take no part in matching (`record_matching` false)."""
        key = self.normalise(type_name, value)
        identifier_type = self.registry.get(key.type)
        if identifier_type is not None and not identifier_type.record_matching:
            raise IdentifierError(
                "type", f"{key.type} is not used to match records; resolve it with ResolvePerson"
            )
        return key

    def normalise_value(self, identifier_type: IdentifierType, value: str) -> str:
        """Normalise a value of a known type (blocked values are not checked here)."""
        value = value.strip()
        if not value:
            raise IdentifierError("value", "is required")
        if identifier_type.kind is NormalisationKind.WEB_PUSH_SUBSCRIPTION:
            # JSON may be laid out on several lines: the canonical form holds no control characters.
            normalised = normalise_web_push_subscription(value, http_loopback=self.web_push_http_loopback)
            if len(normalised) > identifier_type.max_length:
                raise IdentifierError("value", f"is longer than {identifier_type.max_length} characters")
            return normalised
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


def normalise_web_push_subscription(value: str, *, http_loopback: bool = False) -> str:
    """A browser's PushSubscription (`subscription.toJSON()`: endpoint, keys p256dh and auth) as canonical
    JSON: `{"endpoint":…,"keys":{"auth":…,"p256dh":…}}`, sorted, compact, keys in unpadded base64url, other
    fields (expirationTime) dropped, so the same subscription always compares equal.

    The endpoint must be an https URL (RFC 8030 requires it); with `http_loopback`, http to a loopback host
    too (a local push service in tests). p256dh must be an uncompressed P-256 point (65 bytes, 0x04 first)
    and auth 16 bytes (RFC 8291). The value is personal data like any identifier: errors never quote it.
    """
    if len(value) > _MAX_SUBSCRIPTION_INPUT:
        raise IdentifierError("value", f"is longer than {_MAX_SUBSCRIPTION_INPUT} characters")
    try:
        parsed: Any = json.loads(value)
    except (ValueError, RecursionError) as error:
        raise IdentifierError("value", "is not JSON (a Web Push subscription's toJSON())") from error
    if not isinstance(parsed, dict):
        raise IdentifierError("value", "is not a JSON object with endpoint and keys")
    endpoint = _subscription_endpoint(parsed.get("endpoint"), http_loopback=http_loopback)
    keys = parsed.get("keys")
    if not isinstance(keys, dict):
        raise IdentifierError("value", "has no keys object (p256dh and auth)")
    p256dh = _subscription_key(keys.get("p256dh"), "p256dh", _P256DH_BYTES)
    if p256dh[0] != 0x04:
        raise IdentifierError("value", "keys.p256dh is not an uncompressed P-256 public key")
    auth = _subscription_key(keys.get("auth"), "auth", _AUTH_BYTES)
    canonical = {"endpoint": endpoint, "keys": {"auth": _base64url(auth), "p256dh": _base64url(p256dh)}}
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _subscription_endpoint(endpoint: object, *, http_loopback: bool) -> str:
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise IdentifierError("value", "has no endpoint")
    endpoint = endpoint.strip()
    if has_control_characters(endpoint) or any(c.isspace() for c in endpoint):
        raise IdentifierError("value", "endpoint holds spaces or control characters")
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError on a port out of range
    except ValueError as error:
        raise IdentifierError("value", "endpoint is not a URL") from error
    if not host:
        raise IdentifierError("value", "endpoint has no host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise IdentifierError("value", "endpoint may hold no user, password or fragment")
    if parts.scheme == "https" or (parts.scheme == "http" and http_loopback and _is_loopback(host)):
        return endpoint
    raise IdentifierError("value", "endpoint is not an https URL")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _subscription_key(text: object, name: str, size: int) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        raise IdentifierError("value", f"keys.{name} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as error:
        raise IdentifierError("value", f"keys.{name} is not base64url") from error
    if len(raw) != size:
        raise IdentifierError("value", f"keys.{name} is {len(raw)} bytes, not {size}")
    return raw


def _base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
