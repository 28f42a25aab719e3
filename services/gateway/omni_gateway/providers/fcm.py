"""Firebase Cloud Messaging, HTTP v1 API: push to an app install's registration token (Android, iOS, web).

Authentication is Google's OAuth 2.0 service-account flow (RFC 7523 JWT bearer grant): a JWT signed RS256 with
the service account's private key (`iss` the account's email, `scope` firebase.messaging, `aud` its
token_uri, an hour long) is exchanged at the account's `token_uri` for an access token, kept until shortly
before it expires and shared by concurrent sends (one refresh at a time). google-auth does the same but
synchronously over requests; the grant is one POST, done here with pyjwt and the pooled aiohttp session.

A send is `POST {base_url}/v1/projects/{project_id}/messages:send` with `{"message": {"token", "notification":
{title, body, image}, "data", "android", "apns", "webpush"}}`; the answer's `name`
(`projects/…/messages/…`) is the provider's message id. The deep link travels in `data.deep_link` (the app
opens it), and as `webpush.fcm_options.link` when it is an https URL (the browser opens it). Errors are
FCM's (`google.firebase.fcm.v1.FcmError`): UNREGISTERED or 404 is an invalid address (the app was
uninstalled or the token expired), QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL, 429 and 5xx are transient with
the Retry-After FCM sends, INVALID_ARGUMENT and other refusals permanent.

The address is the person's `push_token` identifier at identity.
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

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
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

__all__ = ["IDENTIFIER_TYPE", "FcmProvider", "FcmSettings", "ServiceAccount", "fcm_message"]

tracer = trace.get_tracer("omni_gateway.providers.fcm")

IDENTIFIER_TYPE = "push_token"
"""Identity's identifier type holding a person's FCM registration tokens."""

MESSAGING_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_ASSERTION_LIFETIME_S = 3600  # Google's maximum
_TOKEN_RENEW_BEFORE_S = 300
# FCM refuses these as data keys (and any starting with "google" or "gcm").
_RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
_COLLAPSE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TRANSIENT_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


class ServiceAccount(BaseModel):
    """The fields of a Google service-account key file (JSON) the token flow uses."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["service_account"] = "service_account"
    project_id: str = ""
    private_key_id: str = ""
    private_key: SecretStr
    client_email: str = Field(min_length=3)
    token_uri: str = "https://oauth2.googleapis.com/token"

    def signing_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_key.get_secret_value().encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the service account's private_key is not an RSA key")
        return key


class FcmSettings(BaseSettings):
    """FCM settings, from OMNI_GATEWAY_FCM_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="OMNI_GATEWAY_FCM_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    service_account_json: SecretStr | None = Field(
        None, description="The service account's key file, its JSON as one value (a secret)."
    )
    service_account_file: Path | None = Field(
        None, description="Or the path of the key file (a mounted secret)."
    )
    project_id: str = Field(
        "",
        pattern=r"^([a-z][a-z0-9-]{4,61}[a-z0-9])?$",
        description="The Firebase project; by default the service account's project_id.",
    )
    base_url: str = Field(
        "https://fcm.googleapis.com", description="Where the FCM HTTP v1 API is (a local server in tests)."
    )
    ttl_s: int = Field(
        24 * 3600, ge=0, le=28 * 24 * 3600, description="How long FCM keeps a message for an offline device."
    )
    collapse_data_key: str = Field(
        "topic",
        description="The key of the push content's data whose value (1 to 64 of A-Z a-z 0-9 _ -) becomes the "
        "collapse key (Android collapse_key, APNs apns-collapse-id, Web Push Topic).",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one request to FCM or the token endpoint.")
    max_connections: int = Field(100, ge=1, le=10_000, description="Connections pooled to FCM.")

    _empty_is_none = field_validator("service_account_json", "service_account_file", mode="before")(
        empty_is_none
    )

    @model_validator(mode="after")
    def _account_is_readable(self) -> FcmSettings:
        if one_of(
            self.service_account_json,
            self.service_account_file,
            ("service_account_json", "service_account_file"),
            required=False,
        ):
            account = self.service_account()
            account.signing_key()
            if not (self.project_id or account.project_id):
                raise ValueError("no project_id: set it or use a service account that names one")
        return self

    @property
    def configured(self) -> bool:
        """Whether a service account is given (without one FCM is not offered)."""
        return self.service_account_json is not None or self.service_account_file is not None

    def service_account(self) -> ServiceAccount:
        """The service account these settings name."""
        text = secret_text(self.service_account_json, self.service_account_file, "FCM service account")
        return ServiceAccount.model_validate_json(text)


def fcm_message(outgoing: Outgoing, *, ttl_s: int, collapse_data_key: str = "topic") -> dict[str, Any]:
    """The v1 API's `message` for one push (ProviderFailure PERMANENT for data FCM would refuse)."""
    content = outgoing.content
    if not isinstance(content, PushContent):
        raise ProviderFailure(
            FailureKind.PERMANENT, f"not push content: {type(content).__name__}", provider="fcm"
        )
    data = {str(k): str(v) for k, v in content.data.items()}
    reserved = sorted(k for k in data if k in _RESERVED_DATA_KEYS or k.startswith(("google", "gcm")))
    if reserved:
        raise ProviderFailure(
            FailureKind.PERMANENT, f"FCM reserves the data keys {', '.join(reserved)}", provider="fcm"
        )
    data["message_id"] = str(outgoing.message_id)
    if content.deep_link:
        data["deep_link"] = content.deep_link
    notification = {"title": content.title, "body": content.body}
    if content.image_url:
        notification["image"] = content.image_url
    urgent = outgoing.purpose is Purpose.TRANSACTIONAL
    android: dict[str, Any] = {"ttl": f"{ttl_s}s", "priority": "HIGH" if urgent else "NORMAL"}
    apns_headers = {
        "apns-priority": "10" if urgent else "5",
        "apns-expiration": str(int(time.time()) + ttl_s),
    }
    webpush: dict[str, Any] = {"headers": {"TTL": str(ttl_s), "Urgency": "high" if urgent else "normal"}}
    collapse = content.data.get(collapse_data_key, "")
    if collapse and _COLLAPSE.fullmatch(collapse):
        android["collapse_key"] = collapse
        apns_headers["apns-collapse-id"] = collapse
        if len(collapse) <= 32:
            webpush["headers"]["Topic"] = collapse
    if urlsplit(content.deep_link).scheme == "https":
        webpush["fcm_options"] = {"link": content.deep_link}
    apns: dict[str, Any] = {"headers": apns_headers, "payload": {"aps": {"mutable-content": 1}}}
    if content.image_url:
        apns["fcm_options"] = {"image": content.image_url}
    return {
        "token": outgoing.address,
        "notification": notification,
        "data": data,
        "android": android,
        "apns": apns,
        "webpush": webpush,
    }


class FcmProvider:
    """Delivers push content to FCM registration tokens (ChannelProvider)."""

    name = "fcm"
    channel = Channel.PUSH

    def __init__(self, settings: FcmSettings) -> None:
        if not settings.configured:
            raise ValueError("FCM needs a service account")
        self._settings = settings
        self._account = settings.service_account()
        self._key = self._account.signing_key()
        self.project_id = settings.project_id or self._account.project_id
        self._send_url = (
            f"{settings.base_url.rstrip('/')}/v1/projects/{quote(self.project_id, safe='')}/messages:send"
        )
        self._session: aiohttp.ClientSession | None = None
        self._access_token: tuple[str, float] | None = None
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: FcmSettings | None = None) -> FcmProvider:
        """The provider the settings (by default from the environment) describe."""
        return cls(settings if settings is not None else FcmSettings())

    def address_of(self, person: PersonContacts) -> str | None:
        """The person's newest push token: identity lists identifiers oldest first, and the newest is the
        one most likely still live (an older one is often of a reinstalled app or a reset browser)."""
        addresses = self.addresses_of(person)
        return addresses[0] if addresses else None

    def addresses_of(self, person: PersonContacts) -> tuple[str, ...]:
        """All the person's push tokens, newest first: a person has one per browser or app install, and
        the delivery flow may skip those it has suppressed (reported gone) and try the next, or send to each."""
        return tuple(reversed(person.identifiers.get(IDENTIFIER_TYPE) or ()))

    async def start(self, receipts: ReceiptSink) -> None:
        """Open the pooled session. FCM reports nothing after it took a message (no delivery receipts)."""
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
        """POST the message to messages:send; a refused access token is renewed once and the send repeated."""
        if self._session is None:
            raise ProviderFailure(FailureKind.TRANSIENT, "not started", provider=self.name)
        if not outgoing.address.strip():
            raise ProviderFailure(FailureKind.ADDRESS_INVALID, "no registration token", provider=self.name)
        body = {
            "message": fcm_message(
                outgoing, ttl_s=self._settings.ttl_s, collapse_data_key=self._settings.collapse_data_key
            )
        }
        with tracer.start_as_current_span(
            "fcm send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "omni.message_id": str(outgoing.message_id),
                "server.address": urlsplit(self._send_url).hostname or "",
            },
        ) as span:
            try:
                for renewed in (False, True):
                    token = await self._token(renew=renewed)
                    status, answer, headers = await self._post(token, body)
                    span.set_attribute("http.response.status_code", status)
                    if status == 401 and not renewed and _fcm_code(answer) != "THIRD_PARTY_AUTH_ERROR":
                        continue  # our token revoked or expired early: one more try with a new one
                    if status == 200:
                        return Accepted(
                            provider=self.name,
                            provider_message_id=str(answer.get("name", "")),
                            details={"project_id": self.project_id},
                        )
                    raise _failure(status, answer, headers)
                raise AssertionError("unreachable")
            except ProviderFailure as failure:
                span.set_status(trace.Status(trace.StatusCode.ERROR, failure.detail))
                raise

    async def _post(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        assert self._session is not None
        try:
            async with self._session.post(
                self._send_url, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                text = await response.text()
                return response.status, _json_object(text), response.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT, f"FCM unreachable: {error!r}", provider=self.name
            ) from error

    async def _token(self, *, renew: bool = False) -> str:
        """An access token, from the cache unless it is close to expiry or renew is asked."""
        cached = self._access_token
        if not renew and cached is not None and cached[1] > time.time():
            return cached[0]
        async with self._token_lock:
            if self._access_token is not None and self._access_token is not cached:
                return self._access_token[0]  # another send renewed it while this one waited
            self._access_token = await self._exchange()
            return self._access_token[0]

    async def _exchange(self) -> tuple[str, float]:
        """The JWT-bearer grant at the account's token_uri: (access token, when to renew it)."""
        assert self._session is not None
        now = int(time.time())
        account = self._account
        assertion = jwt.encode(
            {
                "iss": account.client_email,
                "scope": MESSAGING_SCOPE,
                "aud": account.token_uri,
                "iat": now,
                "exp": now + _ASSERTION_LIFETIME_S,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": account.private_key_id} if account.private_key_id else None,
        )
        try:
            async with self._session.post(
                account.token_uri, data={"grant_type": JWT_BEARER, "assertion": assertion}
            ) as response:
                answer = _json_object(await response.text())
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ProviderFailure(
                FailureKind.TRANSIENT, f"token endpoint unreachable: {error!r}", provider=self.name
            ) from error
        token = answer.get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            # A refused grant is our configuration (a deleted key, a wrong clock): transient, so messages wait
            # while the breaker opens, and go once it is fixed.
            why = answer.get("error_description") or answer.get("error") or f"HTTP {status}"
            raise ProviderFailure(
                FailureKind.TRANSIENT, f"access token refused: {str(why)[:200]}", provider=self.name
            )
        expires_in = answer.get("expires_in", 3600)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        return token, time.time() + max(lifetime - _TOKEN_RENEW_BEFORE_S, lifetime / 2)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(answer: dict[str, Any]) -> dict[str, Any]:
    error = answer.get("error")
    return error if isinstance(error, dict) else {}


def _fcm_code(answer: dict[str, Any]) -> str:
    """FCM's own error code (google.firebase.fcm.v1.FcmError in the status details), or ''."""
    for detail in _error(answer).get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(
            "google.firebase.fcm.v1.FcmError"
        ):
            return str(detail.get("errorCode", ""))
    return ""


def _failure(status: int, answer: dict[str, Any], headers: Any) -> ProviderFailure:
    """FCM's error (google.rpc.Status with FcmError details) as a ProviderFailure."""
    error = _error(answer)
    code = str(error.get("status", ""))
    fcm_code = _fcm_code(answer)
    reason = fcm_code or code or f"HTTP {status}"
    detail = f"FCM answered {status} {reason}: {str(error.get('message', ''))[:200]}".rstrip(": ")
    if fcm_code == "UNREGISTERED" or status == 404:
        return ProviderFailure(FailureKind.ADDRESS_INVALID, f"token gone: {detail}", provider="fcm")
    if fcm_code in _TRANSIENT_CODES or code in _TRANSIENT_CODES or status == 429 or status >= 500:
        return ProviderFailure(
            FailureKind.TRANSIENT,
            detail,
            provider="fcm",
            retry_after_s=retry_after_seconds(headers.get("Retry-After")),
        )
    if fcm_code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"):
        # A token of another project; the project's APNs or Web Push credentials refused at FCM: this
        # message will not go this way.
        return ProviderFailure(FailureKind.PERMANENT, detail, provider="fcm")
    if status in (401, 403):
        # Our own credentials or project (a token refused twice, the API not enabled, a role missing):
        # messages wait while the breaker is open and go once it is fixed.
        return ProviderFailure(FailureKind.TRANSIENT, detail, provider="fcm")
    # INVALID_ARGUMENT (a malformed token or message) and other refusals: the same message will not go.
    return ProviderFailure(FailureKind.PERMANENT, detail, provider="fcm")


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> FcmProvider:
    """The provider from a registry entry (kind "fcm"): `options` are FcmSettings (service_account_json or service_account_file, project_id, base_url, ...);
    what they do not give comes from the OMNI_GATEWAY_FCM_* variables (a secret mounted there).
    `defaults` are not used. Raises ValueError (pydantic's ValidationError) naming what is wrong, never a
    key."""
    return from_registry(FcmProvider, FcmSettings, name, options)
