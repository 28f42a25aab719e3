"""The suppression list: addresses not to send to on a channel, and why.

An address gets on the list by a hard bounce or a provider refusing it as invalid (ADDRESS_INVALID), a spam
complaint, an unsubscription (the one-click link, an SMS STOP), or its person's erasure. Every delivery
attempt checks the address it is about to use; a suppressed address fails the message with the reason
("address suppressed: hard_bounce"). A transactional message (a receipt, a password reset) ignores
marketing refusals (complaints, unsubscriptions) but never an address that cannot receive (hard bounce,
invalid) nor an erased person's.

The list keeps the SHA-256 of the normalised address (lower-cased email, trimmed), never the address: it
holds no personal data, and an erased person's address can stay on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum

from omni_gateway.domain import Channel, PermanentFailure, Purpose


class SuppressionReason(StrEnum):
    """Why an address is suppressed."""

    HARD_BOUNCE = "hard_bounce"
    ADDRESS_INVALID = "address_invalid"
    COMPLAINT = "complaint"
    UNSUBSCRIBED = "unsubscribed"
    ERASED = "erased"


NOT_PERSONAL_ADDRESSES = frozenset({Channel.STORE, Channel.WEBHOOK})
"""Channels whose address is not the person's (a store, or any store: "*"; a webhook destination): a
person's erasure suppresses none of them, or every other person's messages there would fail."""

# Reasons that stop every message; the others stop marketing only.
_EVERY_PURPOSE = frozenset(
    {SuppressionReason.HARD_BOUNCE, SuppressionReason.ADDRESS_INVALID, SuppressionReason.ERASED}
)
# Which reason is named when several hold, the most final first.
_PRECEDENCE = [
    SuppressionReason.ERASED,
    SuppressionReason.HARD_BOUNCE,
    SuppressionReason.ADDRESS_INVALID,
    SuppressionReason.COMPLAINT,
    SuppressionReason.UNSUBSCRIBED,
]


def normalise(channel: Channel, address: str) -> str:
    """The form an address is compared in: emails lower-cased, every address trimmed."""
    address = address.strip()
    return address.lower() if channel == Channel.EMAIL else address


def address_hash(channel: Channel, address: str) -> bytes:
    """The key of an address on the list (SHA-256 of the channel and the normalised address)."""
    return hashlib.sha256(f"{channel.value}\x00{normalise(channel, address)}".encode()).digest()


def blocking(reasons: Iterable[str], purpose: Purpose) -> SuppressionReason | None:
    """The reason, among those an address is suppressed for, that stops a message of this purpose."""
    held = {SuppressionReason(reason) for reason in reasons}
    for reason in _PRECEDENCE:
        if reason in held and (purpose == Purpose.MARKETING or reason in _EVERY_PURPOSE):
            return reason
    return None


class Suppressed(PermanentFailure):
    """The address is on the suppression list for a reason that stops this message."""

    def __init__(self, reason: SuppressionReason) -> None:
        super().__init__(f"address suppressed: {reason.value}")
        self.reason = reason


class AddressRefused(PermanentFailure):
    """A provider refused the address as wrong or gone: the message fails and the address is suppressed."""

    def __init__(self, detail: str, *, channel: Channel, address: str, provider: str) -> None:
        super().__init__(detail)
        self.channel = channel
        self.address = address
        self.provider = provider
