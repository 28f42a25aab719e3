"""Web Push: a message to a browser's push subscription, through the push service behind its endpoint.

The protocol is three RFCs, done by pywebpush (Mozilla's Web Push library) and the libraries under it:
RFC 8030 delivery (one POST to the subscription's endpoint, with TTL, Urgency and Topic headers), RFC 8291
payload encryption (aes128gcm with an ECDH key agreed with the subscription's p256dh key and its auth secret,
`http_ece`) and RFC 8292 VAPID (an ES256 JWT for the endpoint's origin in `Authorization: vapid t=…,k=…`,
`py_vapid`). Connections to each push service are pooled in one aiohttp session.

The address is the person's `web_push_subscription` identifier at identity: the subscription's JSON as the
browser's `PushSubscription.toJSON()` gives it, checked and stored canonical by identity. The push service
answering 404 or 410 means the subscription is gone (the user unsubscribed, the browser dropped it):
ADDRESS_INVALID, so the delivery flow detaches it.

What the service worker receives (decrypted) is the JSON object `{"title", "body", "deep_link", "image",
"data", "message_id"}` (empty fields left out), at most `MAX_PAYLOAD_BYTES` bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry import trace
from py_vapid import Vapid
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pywebpush import WebPusher

from omni_gateway.domain import Channel, Purpose
from omni_gateway.providers.base import (
    Accepted,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    PushContent,
    ReceiptSink,
)
from omni_gateway.providers.retry_after import retry_after_seconds
from omni_gateway.providers.secret_settings import empty_is_none, from_registry, one_of, secret_text

__all__ = [
    "IDENTIFIER_TYPE",
    "MAX_PAYLOAD_BYTES",
    "WebPushProvider",
    "WebPushSettings",
    "load_vapid_key",
    "push_payload",
]

tracer = trace.get_tracer("omni_gateway.providers.webpush")

IDENTIFIER_TYPE = "web_push_subscription"
"""Identity's identifier type holding a person's Web Push subscriptions."""

# RFC 8030 §7.2 / RFC 8291 §4: a push service must take 4096 bytes of encrypted body; aes128gcm costs 86 bytes
# of header (salt 16, record size 4, key id length 1, the sender's public key 65), 16 of tag and 1 of padding
# delimiter, so this much plaintext always fits in one record.
MAX_PAYLOAD_BYTES = 4096 - 86 - 16 - 1

# RFC 8030 §5.4: a topic is at most 32 characters of the base64url alphabet.
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
Urgency = Literal["very-low", "low", "normal", "high"]
# A VAPID JWT may live 24 hours (RFC 8292 §2); signed ones are reused per push service until this close
# to their expiry.
_VAPID_RENEW_BEFORE_S = 600


class WebPushSettings(BaseSettings):
    """Web Push settings, from OMNI_GATEWAY_WEBPUSH_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="OMNI_GATEWAY_WEBPUSH_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    vapid_private_key: SecretStr | None = Field(
        None,
        description="The VAPID private key (P-256): PEM, or base64url of the raw 32-byte key or of its DER "
        "(what `vapid --gen` and web-push libraries print). Or give vapid_private_key_file.",
    )
    vapid_private_key_file: Path | None = Field(
        None, description="A file holding the VAPID private key in one of those forms (a mounted secret)."
    )
    vapid_subject: str = Field(
        "",
        description='Who push services contact about our sends: "mailto:ops@shop.example" or an https URL '
        "(the JWT's sub claim).",
    )
    vapid_expiry_s: int = Field(
        12 * 3600, ge=60, le=24 * 3600, description="Lifetime of each VAPID JWT (RFC 8292: at most 24 h)."
    )
    ttl_s: int = Field(
        24 * 3600,
        ge=0,
        le=28 * 24 * 3600,
        description="How long the push service keeps a message for an offline browser (TTL header).",
    )
    urgency_marketing: Urgency = Field("normal", description="Urgency header of marketing messages.")
    urgency_transactional: Urgency = Field("high", description="Urgency header of transactional messages.")
    topic_data_key: str = Field(
        "topic",
        description="The key of the push content's data whose value (1 to 32 base64url characters) becomes "
        "the Topic header: a newer message with the same topic replaces one still waiting.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one request to a push service.")
    max_connections: int = Field(100, ge=1, le=10_000, description="Connections pooled to push services.")
    allow_http_loopback: bool = Field(
        False, description="Send to http endpoints on a loopback host (a local push service in tests)."
    )

    _empty_is_none = field_validator("vapid_private_key", "vapid_private_key_file", mode="before")(
        empty_is_none
    )

    @field_validator("vapid_subject")
    @classmethod
    def _subject_is_a_contact(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"mailto:[^@\s]+@[^@\s]+|https://[^\s/]+(/\S*)?", value):
            raise ValueError('must be "mailto:<address>" or an https URL')
        return value

    @model_validator(mode="after")
    def _key_is_readable(self) -> WebPushSettings:
        names = ("vapid_private_key", "vapid_private_key_file")
        one_of(self.vapid_private_key, self.vapid_private_key_file, names, required=False)
        if self.configured:
            self.private_key()  # refuse an unreadable key at start, not at the first send
        return self

    @property
    def configured(self) -> bool:
        """Whether a key and a subject are given (without them Web Push is not offered)."""
        has_key = self.vapid_private_key is not None or self.vapid_private_key_file is not None
        return has_key and bool(self.vapid_subject)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The VAPID private key these settings name."""
        return load_vapid_key(
            secret_text(self.vapid_private_key, self.vapid_private_key_file, "VAPID private key")
        )


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM, or base64url (padded or not) of its raw 32 bytes or of its DER."""
    text = text.strip()
    key: object
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            compact = "".join(text.split()).rstrip("=")
            raw = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error) as error:
        raise ValueError("the VAPID private key is neither PEM nor base64url of a raw or DER key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the VAPID private key must be an EC key on P-256")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key browsers subscribe with (`applicationServerKey`), base64url of the uncompressed point."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


def push_payload(outgoing: Outgoing) -> bytes:
    """The JSON the service worker receives; ProviderFailure PERMANENT when it is over MAX_PAYLOAD_BYTES."""
    content = outgoing.content
    if not isinstance(content, PushContent):
        raise ProviderFailure(
            FailureKind.PERMANENT, f"not push content: {type(content).__name__}", provider="webpush"
        )
    document: dict[str, Any] = {"title": content.title, "body": content.body}
    if content.deep_link:
        document["deep_link"] = content.deep_link
    if content.image_url:
        document["image"] = content.image_url
    if content.data:
        document["data"] = dict(content.data)
    document["message_id"] = str(outgoing.message_id)
    payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProviderFailure(
            FailureKind.PERMANENT,
            f"the push payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} a push service "
            "must accept",
            provider="webpush",
        )
    return payload


class WebPushProvider:
    """Delivers push content to Web Push subscriptions (ChannelProvider)."""

    name = "webpush"
    channel = Channel.PUSH

    def __init__(self, settings: WebPushSettings) -> None:
        if not settings.configured:
            raise ValueError("Web Push needs a VAPID private key and subject")
        self._settings = settings
        # The subject was checked by the settings; py_vapid's own stricter pattern would raise at a send.
        self._vapid = Vapid(private_key=settings.private_key(), conf={"no-strict": True})
        self.application_server_key = application_server_key(settings.private_key())
        self._session: aiohttp.ClientSession | None = None
        self._headers_by_origin: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_settings(cls, settings: WebPushSettings | None = None) -> WebPushProvider:
        """The provider the settings (by default from the environment) describe."""
        return cls(settings if settings is not None else WebPushSettings())

    def address_of(self, person: PersonContacts) -> str | None:
        """The person's newest Web Push subscription: identity lists identifiers oldest first, and the newest is the
        one most likely still live (an older one is often of a reinstalled app or a reset browser)."""
        addresses = self.addresses_of(person)
        return addresses[0] if addresses else None

    def addresses_of(self, person: PersonContacts) -> tuple[str, ...]:
        """All the person's Web Push subscriptions, newest first: a person has one per browser or app install, and
        the delivery flow may skip those it has suppressed (reported gone) and try the next, or send to each."""
        return tuple(reversed(person.identifiers.get(IDENTIFIER_TYPE) or ()))

    async def start(self, receipts: ReceiptSink) -> None:
        """Open the pooled session. Web Push reports nothing after the push service took a message."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._settings.max_connections),
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, outgoing: Outgoing) -> Accepted:
        """Encrypt the payload for the subscription and POST it to its endpoint."""
        if self._session is None:
            raise ProviderFailure(FailureKind.TRANSIENT, "not started", provider=self.name)
        subscription, origin = self._subscription(outgoing.address)
        payload = push_payload(outgoing)
        headers = {"Authorization": self._vapid_authorization(origin), "Urgency": self._urgency(outgoing)}
        if isinstance(outgoing.content, PushContent):
            topic = outgoing.content.data.get(self._settings.topic_data_key, "")
            if topic and _TOPIC.fullmatch(topic):
                headers["Topic"] = topic
        host = urlsplit(origin).hostname or ""
        with tracer.start_as_current_span(
            "webpush send",
            kind=trace.SpanKind.CLIENT,
            attributes={"omni.message_id": str(outgoing.message_id), "server.address": host},
        ) as span:
            try:
                pusher = WebPusher(subscription, aiohttp_session=self._session)
                # pywebpush passes its own 10,000 s timeout to the session unless given one.
                response = await pusher.send_async(
                    payload,
                    headers,
                    ttl=self._settings.ttl_s,
                    content_encoding="aes128gcm",
                    timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                failure = ProviderFailure(
                    FailureKind.TRANSIENT, f"push service unreachable: {error!r}", provider=self.name
                )
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise failure from error
            assert isinstance(response, aiohttp.ClientResponse)
            status = response.status
            span.set_attribute("http.response.status_code", status)
            if status in (200, 201, 202):
                return Accepted(
                    provider=self.name,
                    provider_message_id=response.headers.get("Location", ""),
                    details={"status": status, "payload_bytes": len(payload), "ttl_s": self._settings.ttl_s},
                )
            failure = self._failure(status, response.reason or "", await response.text(), response.headers)
            span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
            raise failure

    def _subscription(self, address: str) -> tuple[dict[str, Any], str]:
        """The subscription of an address, and its endpoint's origin (the VAPID audience)."""
        try:
            subscription = json.loads(address)
            endpoint = subscription["endpoint"]
            keys = subscription["keys"]
            parts = urlsplit(endpoint)
            if not parts.hostname:
                raise ValueError("no host")
            # What pywebpush and http_ece would choke on mid-send: keys of the wrong size, off the curve.
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unbase64url(keys["p256dh"]))
            if len(_unbase64url(keys["auth"])) != 16:
                raise ValueError("auth is not 16 bytes")
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as error:
            raise ProviderFailure(
                FailureKind.ADDRESS_INVALID, "not a Web Push subscription", provider=self.name
            ) from error
        secure = parts.scheme == "https"
        local_http = (
            parts.scheme == "http" and self._settings.allow_http_loopback and _loopback(parts.hostname)
        )
        if not (secure or local_http):
            raise ProviderFailure(
                FailureKind.ADDRESS_INVALID, "the subscription's endpoint is not https", provider=self.name
            )
        return {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}, (
            f"{parts.scheme}://{parts.netloc}"
        )

    def _vapid_authorization(self, origin: str) -> str:
        """`vapid t=<JWT>,k=<public key>` for the push service at origin, signed again near its expiry."""
        now = time.time()
        cached = self._headers_by_origin.get(origin)
        if cached is not None and cached[1] - _VAPID_RENEW_BEFORE_S > now:
            return cached[0]
        expires = int(now) + self._settings.vapid_expiry_s
        claims = {"aud": origin, "exp": expires, "sub": self._settings.vapid_subject}
        header = str(self._vapid.sign(claims)["Authorization"])
        if len(self._headers_by_origin) > 1000:  # push services are few; never let the cache grow unbounded
            self._headers_by_origin.clear()
        self._headers_by_origin[origin] = (header, float(expires))
        return header

    def _urgency(self, outgoing: Outgoing) -> str:
        if outgoing.purpose is Purpose.TRANSACTIONAL:
            return self._settings.urgency_transactional
        return self._settings.urgency_marketing

    def _failure(self, status: int, reason: str, body: str, headers: Any) -> ProviderFailure:
        detail = f"push service answered {status} {reason}: {body[:200]}".rstrip(": ")
        if status in (404, 410):
            return ProviderFailure(
                FailureKind.ADDRESS_INVALID, f"subscription gone: {detail}", provider=self.name
            )
        if status == 429 or status >= 500:
            return ProviderFailure(
                FailureKind.TRANSIENT,
                detail,
                provider=self.name,
                retry_after_s=retry_after_seconds(headers.get("Retry-After")),
            )
        # 400 malformed, 401/403 VAPID refused (a key other than the one the browser subscribed with),
        # 413 too large: sending the same again will not help.
        return ProviderFailure(FailureKind.PERMANENT, detail, provider=self.name)


def _unbase64url(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        raise ValueError("not base64url")
    bare = text.rstrip("=")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def _loopback(host: str | None) -> bool:
    if host in ("localhost", "::1"):
        return True
    return bool(host) and re.fullmatch(r"127(\.\d{1,3}){3}", host or "") is not None


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> WebPushProvider:
    """The provider from a registry entry (kind "webpush"): `options` are WebPushSettings (vapid_private_key or vapid_private_key_file, vapid_subject, ...);
    what they do not give comes from the OMNI_GATEWAY_WEBPUSH_* variables (a secret mounted there).
    `defaults` are not used. Raises ValueError (pydantic's ValidationError) naming what is wrong, never a
    key."""
    return from_registry(WebPushProvider, WebPushSettings, name, options)
