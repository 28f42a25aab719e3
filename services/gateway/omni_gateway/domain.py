"""The gateway's domain words: channels, purposes, message statuses, a send request and why a delivery failed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Channel(StrEnum):
    """A channel a template or message is for (the same set as omni.common.v1.Channel)."""

    WEB = "web"
    APP = "app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    STORE = "store"
    CALL_CENTER = "call_center"


# Channels the gateway can deliver on today; templates may be stored for any channel.
DELIVERABLE_CHANNELS = frozenset({Channel.EMAIL})


class Purpose(StrEnum):
    """What a message is for, in profile's consent vocabulary; only these two are purposes of a message."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class MessageStatus(StrEnum):
    """Where a message is in its delivery."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


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


class DeliveryError(Exception):
    """A delivery attempt did not hand the message to the provider."""

    transient = False


class PermanentFailure(DeliveryError):
    """Trying again will not help (no address, unknown person, no consent, bad template, refused recipient)."""


class TransientFailure(DeliveryError):
    """Trying again later may work (SMTP server or a service unreachable, a 4xx answer, a timeout)."""

    transient = True
