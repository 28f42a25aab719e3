"""SMS over an HTTP API in the shape of Twilio's Messages API, with httpx: the second SMS provider, for failover.

A send is `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded To, From, Body and
StatusCallback, with HTTP basic auth (AccountSid, AuthToken); the answer (201) is the message as JSON, whose
`sid` is the provider message id. Errors answer a JSON body with a numeric `code`:

| answer | failure |
|---|---|
| 400 with 21211 (invalid To), 21612 (cannot route to the number), 21614 (not a mobile number), 21217 | address invalid |
| 400 with 21610 (the number replied STOP at the vendor), 21617 (body over 1600), 21408 (region not enabled), other 4xx codes | permanent |
| 401/403 (bad credentials), 404, 429 (with Retry-After), 5xx, no connection, timeout | transient (next provider, or later) |

Status callbacks (the vendor POSTs MessageSid, MessageStatus, ErrorCode ... to StatusCallback, signed with
X-Twilio-Signature) are verified and turned into receipts by `omni_gateway.sms_inbound`, which calls
`receipt_from_status`: `delivered` → DELIVERED, `undelivered`/`failed` → FAILED (address_invalid for error
codes 30003, 30005, 30006, 21211, 21614); queued/sending/sent are not final and are dropped.

Each message's StatusCallback is `status_callback_url` with Omni's message id added to its query
(`omni_message_id=…`; the signature covers the whole URL, so it cannot be forged): the vendor may call back
before its answer to the send has been read and recorded, when the message is not yet findable by its sid,
and the receipt then names the message by Omni's id and is applied to it (a receipt for a message still
queued is kept and applied when its send is recorded: `receipts.py`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from omni_gateway.domain import Channel
from omni_gateway.providers.base import (
    Accepted,
    FailureKind,
    Outgoing,
    PersonContacts,
    ProviderFailure,
    Receipt,
    ReceiptKind,
    ReceiptSink,
    SmsContent,
)
from omni_gateway.providers.retry_after import retry_after_seconds
from omni_gateway.sms_keywords import InboundHandler, keyword_handler, to_e164
from omni_gateway.sms_text import plan

__all__ = ["HttpSmsProvider", "HttpSmsSettings", "http_sms_provider", "twilio_signature"]

MAX_BODY_CHARS = 1600
"""The Messages API takes at most 1,600 characters of Body."""

_ADDRESS_INVALID_CODES = frozenset({21211, 21217, 21612, 21614})
_RECEIPT_ADDRESS_INVALID = frozenset({"30003", "30005", "30006", "21211", "21614"})


def twilio_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """X-Twilio-Signature of a POST: base64(HMAC-SHA1(auth token, url + each name+value, sorted by name))."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    data = url + "".join(name + value for name, value in sorted(items))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


class HttpSmsSettings(BaseModel):
    """An account at the HTTP SMS vendor (credentials from a secret in production)."""

    # A bad value is logged at start: it must not show the password it was given.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field("http-sms", description="The provider's name on messages and receipts.")
    base_url: str = Field("https://api.twilio.com", description="The API's base URL.")
    account_sid: str = Field(min_length=1, max_length=64)
    auth_token: SecretStr = Field(description="Basic-auth password and the key of the callback signatures.")
    from_number: str = Field(description="Sender: an E.164 number of the account, or an alphanumeric id.")
    status_callback_url: str = Field(
        "",
        description="The public URL of the gateway's status callback endpoint (sms_inbound's /twilio/status), "
        "sent with every message and used to check the callbacks' signatures; empty: no callbacks.",
    )
    inbound_url: str = Field(
        "",
        description="The public URL of the inbound message endpoint (/twilio/inbound) as configured on the "
        "vendor's number; empty: the URL the request arrived at.",
    )
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(20, ge=1, le=1000, description="Pooled HTTP connections to the API.")


class HttpSmsProvider:
    """SMS through the vendor's REST API (see the module docstring)."""

    channel = Channel.SMS

    def __init__(self, settings: HttpSmsSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._receipts: ReceiptSink | None = None
        self.inbound: InboundHandler | None = None
        """What answers inbound messages (the keyword handler) at its callback endpoint (sms_inbound)."""
        self._url = (
            f"{settings.base_url.rstrip('/')}/2010-04-01/Accounts/{settings.account_sid}/Messages.json"
        )

    def address_of(self, person: PersonContacts) -> str | None:
        for phone in person.identifiers.get("phone") or ():
            number = to_e164(phone) if phone.startswith("+") else None
            if number:
                return number
        return None

    async def start(self, receipts: ReceiptSink) -> None:
        self._receipts = receipts
        limits = httpx.Limits(max_connections=self.settings.max_connections)
        self._client = httpx.AsyncClient(
            auth=(self.settings.account_sid, self.settings.auth_token.get_secret_value()),
            timeout=self.settings.timeout_s,
            limits=limits,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _failure(self, kind: FailureKind, detail: str, retry_after: float | None = None) -> ProviderFailure:
        return ProviderFailure(kind, detail, provider=self.name, retry_after_s=retry_after)

    async def send(self, outgoing: Outgoing) -> Accepted:
        if not isinstance(outgoing.content, SmsContent):
            raise self._failure(FailureKind.PERMANENT, "not an SMS")
        number = to_e164(outgoing.address) if outgoing.address.startswith("+") else None
        if number is None:
            raise self._failure(FailureKind.ADDRESS_INVALID, f"not an E.164 number: {outgoing.address!r}")
        text = outgoing.content.text
        if not text or len(text) > MAX_BODY_CHARS:
            raise self._failure(
                FailureKind.PERMANENT, f"text of {len(text)} characters (1 to {MAX_BODY_CHARS})"
            )
        if self._client is None:
            raise self._failure(FailureKind.TRANSIENT, "not started")
        form = {"To": number, "From": self.settings.from_number, "Body": text}
        if self.settings.status_callback_url:
            form["StatusCallback"] = status_callback(self.settings.status_callback_url, outgoing.message_id)
        try:
            response = await self._client.post(self._url, data=form)
        except httpx.TimeoutException as error:
            raise self._failure(
                FailureKind.TRANSIENT, f"no answer in time (it may have been taken): {error!r}"
            ) from error
        except httpx.HTTPError as error:
            raise self._failure(FailureKind.TRANSIENT, f"cannot reach the API: {error!r}") from error
        body = self._json(response)
        if response.status_code in (200, 201):
            sid = str(body.get("sid", ""))
            if not sid:
                raise self._failure(FailureKind.TRANSIENT, "answer without a message sid")
            sms = plan(text)
            return Accepted(
                provider=self.name,
                provider_message_id=sid,
                details={
                    "encoding": sms.encoding.value,
                    "segments": sms.segments,
                    "status": body.get("status", ""),
                },
            )
        raise self._classify(response, body)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            value = response.json()
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _classify(self, response: httpx.Response, body: Mapping[str, Any]) -> ProviderFailure:
        code = body.get("code")
        detail = f"HTTP {response.status_code}"
        if code is not None:
            detail += f" code {code}: {str(body.get('message', ''))[:200]}"
        status = response.status_code
        if status == 429:
            return self._failure(
                FailureKind.TRANSIENT, detail, retry_after_seconds(response.headers.get("Retry-After"))
            )
        if status >= 500 or status in (401, 403, 404, 408):
            return self._failure(
                FailureKind.TRANSIENT, detail, retry_after_seconds(response.headers.get("Retry-After"))
            )
        if isinstance(code, int) and code in _ADDRESS_INVALID_CODES:
            return self._failure(FailureKind.ADDRESS_INVALID, detail)
        return self._failure(FailureKind.PERMANENT, detail)

    def receipt_from_status(
        self, params: Mapping[str, str], message_id: uuid.UUID | None = None
    ) -> Receipt | None:
        """The receipt a (verified) status callback stands for; None for a state that is not final.
        `message_id` is Omni's id from the callback URL's query, when it has one."""
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
        if not sid:
            return None
        if status == "delivered":
            kind = ReceiptKind.DELIVERED
        elif status in ("undelivered", "failed"):
            kind = ReceiptKind.FAILED
        else:
            return None
        error = params.get("ErrorCode", "")
        return Receipt(
            provider=self.name,
            kind=kind,
            provider_event_id=f"{sid}:{status}",
            occurred_at=datetime.now(UTC),
            provider_message_id=sid,
            message_id=message_id,
            detail=f"{status} {error}".strip(),
            address_invalid=kind is ReceiptKind.FAILED and error in _RECEIPT_ADDRESS_INVALID,
        )

    async def on_status(
        self, params: Mapping[str, str], message_id: uuid.UUID | None = None
    ) -> Receipt | None:
        """Hand the receipt of a verified status callback to the delivery flow; return it."""
        receipt = self.receipt_from_status(params, message_id)
        if receipt is not None and self._receipts is not None:
            await self._receipts(receipt)
        return receipt

    def signature_valid(self, url: str, params: Sequence[tuple[str, str]], signature: str) -> bool:
        expected = twilio_signature(self.settings.auth_token.get_secret_value(), url, params)
        return hmac.compare_digest(expected, signature)


MESSAGE_ID_PARAM = "omni_message_id"
"""The query parameter of a message's StatusCallback URL that holds Omni's message id."""


def status_callback(url: str, message_id: uuid.UUID) -> str:
    """The StatusCallback URL of one message: `url` with the message id added to its query."""
    return str(httpx.URL(url).copy_add_param(MESSAGE_ID_PARAM, str(message_id)))


def message_id_of(query: Mapping[str, str]) -> uuid.UUID | None:
    """Omni's message id in a (verified) callback URL's query, if it holds a valid one."""
    try:
        return uuid.UUID(query.get(MESSAGE_ID_PARAM, ""))
    except ValueError:
        return None


def http_sms_provider(settings: HttpSmsSettings) -> HttpSmsProvider:
    """The provider for these settings."""
    return HttpSmsProvider(settings)


def create(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> HttpSmsProvider:
    """The provider from a registry entry (kind "http-sms"): `options` are HttpSmsSettings (account_sid,
    auth_token, from_number, status_callback_url, ...) and the keyword options
    (sms_keywords.KEYWORD_OPTIONS); its inbound endpoint answers with the keyword handler made from the
    registry's defaults (identity and profile). Raises ValueError (pydantic's ValidationError) naming what is
    wrong, never the token."""
    own, keywords = keyword_handler(options, defaults)
    provider = HttpSmsProvider(HttpSmsSettings.model_validate({**own, "name": name}))
    provider.inbound = keywords.handle_inbound if keywords is not None else None
    return provider
