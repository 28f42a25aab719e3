"""The one interface every channel provider implements, and the words it shares with the delivery flow.

A provider is one module under `omni_gateway.providers`: it says how a person is reached on its channel
(`address_of`), hands a rendered message to the provider (`send`) and sorts what went wrong into a
`ProviderFailure` of one `FailureKind`. Asynchronous outcomes the provider reports later (an SMPP delivery
receipt, a bounce, an open, a webhook endpoint's answer after retries) reach the delivery flow as `Receipt`s
through the `ReceiptSink` the provider is given at start; what the flow does with them (deduplicate by the
provider's event id, update the message, publish, suppress an address) is the flow's, never the provider's.

Nothing here knows about tables, gRPC or NATS: a provider can be tested against its local test server alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from omni_gateway.domain import Channel, Purpose

__all__ = [
    "Accepted",
    "ChannelProvider",
    "Content",
    "EmailContent",
    "FailureKind",
    "LookupProvider",
    "Outgoing",
    "PersonContacts",
    "ProviderFailure",
    "PushContent",
    "Receipt",
    "ReceiptKind",
    "ReceiptSink",
    "RetrySchedule",
    "SmsContent",
    "TerminalContent",
    "WebhookContent",
]


class FailureKind(StrEnum):
    """How a failed send is handled."""

    TRANSIENT = "transient"
    """Trying again later, or with the next provider of the channel, may work (unreachable, 4xx, throttled)."""
    PERMANENT = "permanent"
    """The message itself is refused; no provider will take it (bad content, policy)."""
    ADDRESS_INVALID = "address_invalid"
    """The address is wrong or gone (a hard bounce, an unregistered push token, a number that does not
    exist): the message fails and the address is suppressed or detached so it is not tried again."""


class ProviderFailure(Exception):
    """A provider did not take the message. `detail` is the provider's own words (shown on the message)."""

    def __init__(
        self, kind: FailureKind, detail: str, *, provider: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{provider}: {detail}" if provider else detail)
        self.kind = kind
        self.detail = detail
        self.provider = provider
        self.retry_after_s = retry_after_s
        """The provider's own hint when to try again (Retry-After, an SMPP throttling error), if it gave one."""

    @property
    def transient(self) -> bool:
        return self.kind is FailureKind.TRANSIENT


@dataclass(frozen=True)
class PersonContacts:
    """What identity knows of how to reach a person (the survivor after merges): its identifiers by type, in
    identity's order (`email`, `phone` in E.164, `push_token`, `web_push_subscription` as its JSON, ...), and
    the profile traits a provider may need (locale, time zone)."""

    person_id: uuid.UUID
    identifiers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    traits: Mapping[str, Any] = field(default_factory=dict)

    def first(self, identifier_type: str) -> str | None:
        values = self.identifiers.get(identifier_type) or ()
        return values[0] if values else None


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str = ""


@dataclass(frozen=True)
class SmsContent:
    text: str


@dataclass(frozen=True)
class PushContent:
    title: str
    body: str
    deep_link: str = ""
    image_url: str = ""
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TerminalContent:
    text: str
    """What the till shows or prints (a coupon, receipt text)."""
    store_id: str = ""
    """The store it is for; empty: any store (the provider's address)."""


@dataclass(frozen=True)
class WebhookContent:
    payload: Mapping[str, Any]
    """The JSON object delivered to the endpoint."""


Content = EmailContent | SmsContent | PushContent | TerminalContent | WebhookContent


@dataclass(frozen=True)
class Outgoing:
    """One rendered message on its way to one address."""

    message_id: uuid.UUID
    """Omni's id of the message: the idempotency key given to providers that take one, the Message-ID of an
    email, the msg id of a webhook."""
    person_id: uuid.UUID
    channel: Channel
    purpose: Purpose
    address: str
    """Where it goes: an email address, an E.164 number, a push token or subscription JSON, a destination
    name, a store/terminal id."""
    content: Content
    attempt: int = 1
    locale: str = ""


@dataclass(frozen=True)
class Accepted:
    """The provider took the message."""

    provider: str
    provider_message_id: str = ""
    """The provider's id for it (SMPP message_id, FCM message name, ...), kept on the message so later
    receipts and a reconciliation after a crash find it."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """What is worth keeping about the send (e.g. {"encoding": "UCS-2", "segments": 2} for SMS)."""


class ReceiptKind(StrEnum):
    """An outcome reported after the send."""

    DELIVERED = "delivered"
    FAILED = "failed"
    BOUNCED = "bounced"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True)
class Receipt:
    """An outcome a provider reported for a message it took. One of message_id / provider_message_id names
    the message; provider_event_id is the provider's id for this report (duplicates share it)."""

    provider: str
    kind: ReceiptKind
    provider_event_id: str
    occurred_at: datetime
    message_id: uuid.UUID | None = None
    provider_message_id: str = ""
    detail: str = ""
    address_invalid: bool = False
    """A hard bounce, a number that does not exist: the address is suppressed."""
    machine: bool = False
    """An open or click made by a machine (an image proxy fetching at once, a link scanner)."""


ReceiptSink = Callable[[Receipt], Awaitable[None]]


@runtime_checkable
class ChannelProvider(Protocol):
    """A way to deliver on one channel. Implementations keep their pooled connections between sends and must
    be safe to call concurrently; the delivery flow rate-limits and breaks circuits around them."""

    name: str
    """A short stable name ("smtp", "smpp", "http-sms", "webpush", "fcm", "webhook", "terminal")."""
    channel: Channel

    def address_of(self, person: PersonContacts) -> str | None:
        """Where the person is reached through this provider; None if they cannot be (the delivery flow then
        tries the channel's next provider, or fails the message)."""
        ...

    async def start(self, receipts: ReceiptSink) -> None:
        """Open pools and listeners (an SMPP bind, an inbound endpoint); later receipts go to `receipts`."""
        ...

    async def send(self, outgoing: Outgoing) -> Accepted:
        """Hand one message to the provider; raise ProviderFailure when it does not take it."""
        ...

    async def close(self) -> None:
        """Let sends in flight end, close connections."""
        ...


@runtime_checkable
class LookupProvider(Protocol):
    """A provider that can say whether it holds a message already (by Omni's message id, which it was given as
    an idempotency key). Optional: the delivery flow uses it where a provider has it, when an attempt that
    handed it the message died before recording the outcome, so the message is not sent twice."""

    async def lookup(self, message_id: uuid.UUID) -> Accepted | None:
        """The provider's record of the message if it took it, None if it did not; raise ProviderFailure
        (transient) when it cannot answer now."""
        ...


@runtime_checkable
class RetrySchedule(Protocol):
    """A provider that keeps its own retry schedule (the webhook provider: Standard Webhooks' waits over a
    day). Optional: the delivery flow's retry policy uses it for the messages of a provider that has it
    instead of its own backoff (retry.py)."""

    @property
    def max_attempts(self) -> int:
        """Attempts in all before a message fails."""
        ...

    def retry_delay_s(self, attempt: int) -> float | None:
        """The wait after failed attempt number `attempt` (1-based); None after the last."""
        ...
