"""Apple Push Notification service (APNs): push to an iOS/macOS app install's device token, over HTTP/2 with
token-based authentication.

Authentication is APNs's provider token: a JWT signed ES256 with the team's APNs key (a `.p8` P-256 key from
the developer account), `kid` the key's id, `iss` the team id, `iat` when it was made. One token is used for
every request and made again every `token_refresh_s` (Apple refuses a token older than an hour, and one made
again more often than every 20 minutes); a token APNs calls expired or invalid (403
ExpiredProviderToken/InvalidProviderToken) is made again once and the request repeated.

A send is `POST {base_url}/3/device/<device token>` on an HTTP/2 connection (APNs speaks nothing else) with
the headers `authorization: bearer <jwt>`, `apns-topic` (the app's bundle id), `apns-push-type` (`alert`),
`apns-priority` (10 for transactional messages, 5 for marketing ones), `apns-expiration` (now + `ttl_s`),
`apns-id` (the message's id, so APNs and the app see the same id on every attempt) and `apns-collapse-id`
(the content's `data[collapse_data_key]` when it is 1 to 64 bytes); the body is the JSON payload
`{"aps": {"alert": {"title", "body"}, "mutable-content": 1 (with an image), "sound": "default"},
"message_id", "deep_link", "image_url", ...data}`, at most 4,096 bytes (larger fails PERMANENT unsent).

httpx with HTTP/2 (the h2 package) is the client: aioapns, the maintained asyncio APNs client, connects only to
Apple's own hosts with a TLS context of its own, so it cannot be pointed at a local server speaking APNs for
the tests; httpx is already the client of the other HTTP providers.

| APNs answers | outcome |
|---|---|
| 200 | accepted; `apns-id` is the provider message id |
| 410 Unregistered, 400 BadDeviceToken, 400 DeviceTokenNotForTopic | ADDRESS_INVALID: the token is gone (suppressed) |
| 429 TooManyRequests, 500, 503 (ServiceUnavailable, Shutdown), unreachable | TRANSIENT: retried with backoff |
| 403 twice (a provider token refused after one made anew), other 403 | TRANSIENT (our credentials: the breaker holds messages) |
| 413 PayloadTooLarge, other 400 | PERMANENT |

The address is a `push_token` identifier of the person at identity that is an APNs device token (hex).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry import trace
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

__all__ = ["IDENTIFIER_TYPE", "MAX_PAYLOAD_BYTES", "ApnsProvider", "ApnsSettings", "apns_payload"]

tracer = trace.get_tracer("omni_gateway.providers.apns")

IDENTIFIER_TYPE = "push_token"
"""Identity's identifier type holding push tokens; those that are hex are APNs device tokens."""

MAX_PAYLOAD_BYTES = 4096
DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
_GONE = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic", "ExpiredToken"})
_PROVIDER_TOKEN_REFUSED = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
_TRANSIENT_STATUS = frozenset({429, 500, 503})


class ApnsSettings(BaseSettings):
    """APNs settings, from OMNI_GATEWAY_APNS_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="OMNI_GATEWAY_APNS_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    key: SecretStr | None = Field(None, description="The APNs auth key (.p8, PEM of a P-256 key; a secret).")
    key_file: Path | None = Field(None, description="Or the path of the .p8 file (a mounted secret).")
    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$", description="The key's id (10 characters).")
    team_id: str = Field(pattern=r"^[A-Z0-9]{10}$", description="The developer team's id (10 characters).")
    topic: str = Field(
        min_length=1, max_length=255, description="The app's bundle id, the topic of its notifications."
    )
    base_url: str = Field(
        "https://api.push.apple.com",
        description="APNs (https://api.sandbox.push.apple.com for development builds; a local server in tests).",
    )
    push_type: Literal["alert"] = "alert"
    ttl_s: int = Field(
        24 * 3600, ge=0, le=28 * 24 * 3600, description="How long APNs keeps a message for an offline device."
    )
    collapse_data_key: str = Field(
        "topic", description="The data key whose value (1 to 64 bytes) becomes apns-collapse-id."
    )
    token_refresh_s: float = Field(
        50 * 60,
        ge=20 * 60,
        le=60 * 60,
        description="How often the provider token is made anew (20 to 60 min).",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one request.")
    max_connections: int = Field(
        4, ge=1, le=1000, description="HTTP/2 connections to APNs (each carries many requests at once)."
    )

    _empty_is_none = field_validator("key", "key_file", mode="before")(empty_is_none)

    @model_validator(mode="after")
    def _key_is_readable(self) -> ApnsSettings:
        one_of(self.key, self.key_file, ("key", "key_file"), required=True)
        self.signing_key()
        return self

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        """The APNs auth key (P-256)."""
        pem = secret_text(self.key, self.key_file, "APNs key").encode()
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as error:
            raise ValueError("the APNs key is not a PEM private key") from error
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the APNs key must be a P-256 (ES256) key")
        return key


def apns_payload(outgoing: Outgoing) -> bytes:
    """The JSON payload of one push (PERMANENT when it is over APNs's 4 KiB)."""
    content = outgoing.content
    if not isinstance(content, PushContent):
        raise ProviderFailure(
            FailureKind.PERMANENT, f"not push content: {type(content).__name__}", provider="apns"
        )
    aps: dict[str, Any] = {"alert": {"title": content.title, "body": content.body}, "sound": "default"}
    if content.image_url:
        aps["mutable-content"] = 1  # the app's notification service extension fetches the image
    payload: dict[str, Any] = {str(k): str(v) for k, v in content.data.items() if k != "aps"}
    payload.update(aps=aps, message_id=str(outgoing.message_id))
    if content.deep_link:
        payload["deep_link"] = content.deep_link
    if content.image_url:
        payload["image_url"] = content.image_url
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ProviderFailure(
            FailureKind.PERMANENT,
            f"payload of {len(body)} bytes, over APNs's {MAX_PAYLOAD_BYTES}",
            provider="apns",
        )
    return body


class ApnsProvider:
    """Delivers push content to APNs device tokens (ChannelProvider)."""

    name = "apns"
    channel = Channel.PUSH

    def __init__(self, settings: ApnsSettings) -> None:
        self._settings = settings
        self._key = settings.signing_key()
        self._base = settings.base_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()

    def address_of(self, person: PersonContacts) -> str | None:
        """The person's newest APNs device token."""
        addresses = self.addresses_of(person)
        return addresses[0] if addresses else None

    def addresses_of(self, person: PersonContacts) -> tuple[str, ...]:
        """The person's APNs device tokens (hex push tokens), newest first."""
        tokens = person.identifiers.get(IDENTIFIER_TYPE) or ()
        return tuple(t for t in reversed(tokens) if DEVICE_TOKEN.fullmatch(t))

    async def start(self, receipts: ReceiptSink) -> None:
        """Open the HTTP/2 client. APNs reports nothing after it took a message."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                http1=False,  # HTTP/2 only: over https by ALPN, over http (a local server) by prior knowledge
                http2=True,
                timeout=httpx.Timeout(self._settings.timeout_s),
                limits=httpx.Limits(max_connections=self._settings.max_connections),
            )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def provider_token(self) -> str:
        """The current provider token (made anew when it is older than token_refresh_s)."""
        cached = self._token
        if cached is not None and time.time() - cached[1] < self._settings.token_refresh_s:
            return cached[0]
        return self._new_token()

    def _new_token(self) -> str:
        now = time.time()
        token = jwt.encode(
            {"iss": self._settings.team_id, "iat": int(now)},
            self._key,
            algorithm="ES256",
            headers={"kid": self._settings.key_id},
        )
        self._token = (token, now)
        return token

    async def send(self, outgoing: Outgoing) -> Accepted:
        """POST the notification to /3/device/<token>; a provider token APNs refuses is made anew once."""
        if self._client is None:
            raise ProviderFailure(FailureKind.TRANSIENT, "not started", provider=self.name)
        device = outgoing.address.strip()
        if not DEVICE_TOKEN.fullmatch(device):
            raise ProviderFailure(FailureKind.ADDRESS_INVALID, "not an APNs device token", provider=self.name)
        body = apns_payload(outgoing)
        url = f"{self._base}/3/device/{quote(device.lower(), safe='')}"
        headers = self._headers(outgoing)
        with tracer.start_as_current_span(
            "apns send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "omni.message_id": str(outgoing.message_id),
                "server.address": urlsplit(url).hostname or "",
            },
        ) as span:
            token = ""
            try:
                for renewed in (False, True):
                    token = self.provider_token() if not renewed else await self._renewed(token)
                    response = await self._post(url, body, {**headers, "authorization": f"bearer {token}"})
                    span.set_attribute("http.response.status_code", response.status_code)
                    reason = _reason(response)
                    if response.status_code == 403 and reason in _PROVIDER_TOKEN_REFUSED and not renewed:
                        continue
                    if response.status_code == 200:
                        return Accepted(
                            provider=self.name,
                            provider_message_id=response.headers.get("apns-id", str(outgoing.message_id)),
                        )
                    raise _failure(response.status_code, reason, response.headers, self.name)
                raise AssertionError("unreachable")
            except ProviderFailure as failure:
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise

    def _headers(self, outgoing: Outgoing) -> dict[str, str]:
        settings = self._settings
        urgent = outgoing.purpose is Purpose.TRANSACTIONAL
        headers = {
            "apns-topic": settings.topic,
            "apns-push-type": settings.push_type,
            "apns-priority": "10" if urgent else "5",
            "apns-expiration": str(int(time.time()) + settings.ttl_s) if settings.ttl_s else "0",
            "apns-id": str(outgoing.message_id),
        }
        content = outgoing.content
        collapse = (
            content.data.get(settings.collapse_data_key, "") if isinstance(content, PushContent) else ""
        )
        if collapse and len(collapse.encode()) <= 64 and collapse.isprintable():
            headers["apns-collapse-id"] = collapse
        return headers

    async def _renewed(self, refused: str) -> str:
        # Concurrent sends refused with the same token make one new token.
        async with self._token_lock:
            cached = self._token
            if cached is not None and cached[0] != refused:
                return cached[0]
            return self._new_token()

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        assert self._client is not None
        try:
            return await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT,
                f"no answer in time (it may have been taken): {error!r}",
                provider=self.name,
            ) from error
        except httpx.HTTPError as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT, f"APNs unreachable: {error!r}", provider=self.name
            ) from error


def _reason(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return ""
    return str(answer.get("reason", "")) if isinstance(answer, dict) else ""


def _failure(status: int, reason: str, headers: Mapping[str, str], provider: str) -> ProviderFailure:
    detail = f"APNs answered {status} {reason}".rstrip()
    if reason in _GONE or status == 410:
        return ProviderFailure(FailureKind.ADDRESS_INVALID, f"token gone: {detail}", provider=provider)
    if status in _TRANSIENT_STATUS or status == 403:
        # 403: our key, team or topic (refused twice, or not allowed): messages wait while it is fixed.
        return ProviderFailure(
            FailureKind.TRANSIENT,
            detail,
            provider=provider,
            retry_after_s=retry_after_seconds(headers.get("retry-after")),
        )
    return ProviderFailure(FailureKind.PERMANENT, detail, provider=provider)


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> ApnsProvider:
    """The provider from a registry entry (kind "apns"): `options` are ApnsSettings (key or key_file, key_id,
    team_id, topic, base_url, ...); what they do not give comes from the OMNI_GATEWAY_APNS_* variables (the
    key from a secret). `defaults` are not used. Raises ValueError (pydantic's ValidationError) naming what is
    wrong, never the key."""
    return from_registry(ApnsProvider, ApnsSettings, name, options)
