"""The gateway's domain words: channels, purposes (omni_kit.contact's, the one vocabulary of contact), message
statuses, a send request and why a delivery failed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omni_kit.contact import Purpose

__all__ = [
    "Channel",
    "DeliveryError",
    "MessageStatus",
    "PermanentFailure",
    "Purpose",
    "SendRequest",
    "TransientFailure",
]


class Channel(StrEnum):
    """A channel a template or message is for (the same set as omni.common.v1.Channel)."""

    WEB = "web"
    APP = "app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    STORE = "store"
    CALL_CENTER = "call_center"
    WEBHOOK = "webhook"
    """The retailer's own systems, reached by a signed POST to a configured destination; not a contact of the
    person (omni_kit.contact.NOT_A_CONTACT_CHANNELS: no consent bears on it)."""


class MessageStatus(StrEnum):
    """Where a message is in its delivery."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    DELIVERED = "delivered"
    """The provider reported it delivered (a receipt); from SENT."""
    BOUNCED = "bounced"
    """The provider reported it bounced (a receipt); from SENT or DELIVERED."""


@dataclass(frozen=True)
class SendRequest:
    """A validated request to send one message, from SendMessage or from decisioning's send_requested."""

    request_id: str
    person_id: uuid.UUID
    channel: Channel
    template_id: str
    variables: dict[str, Any] = field(default_factory=dict)
    journey_id: str = ""
    purpose: Purpose = Purpose.MARKETING
    contact_verdict_version: int = 0
    """The version of the person's contact verdicts the sender decided by (decisioning's journeys); the
    message waits until the gateway's copy is at least as new. 0: the gateway's copy as it is."""


class DeliveryError(Exception):
    """A delivery attempt did not hand the message to the provider."""

    transient = False


class PermanentFailure(DeliveryError):
    """Trying again will not help (no address, unknown person, no consent, bad template, refused recipient)."""


class TransientFailure(DeliveryError):
    """Trying again later may work (SMTP server or a service unreachable, a 4xx answer, a timeout)."""

    transient = True
    retry_after_s: float | None = None
    """A provider's own hint when to try again (the next attempt is not sooner)."""
    scheduled_s: float | None = None
    """The wait before the next attempt by the retry schedule of the provider that failed, where it keeps one
    (providers/base.py RetrySchedule); None: the retry policy's backoff."""
