"""Whether a person's consent lets a message go out: the rule every delivery attempt applies.

Marketing is opt-in: it goes out only while the person's marketing consent for the channel allows contact
(granted and, with double opt-in, confirmed). Transactional messages (receipts, password resets) are owed
to the person whatever they said about marketing, so they are opt-out: they go out unless the person denied
or revoked transactional consent for the channel. The consents are read afresh at each attempt, because a
person may take consent back between a transient failure and the retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from omni_gateway.domain import Channel, Purpose

_NEVER = datetime.min.replace(tzinfo=UTC)


class ConsentState(StrEnum):
    """What a person answered (profile's ConsentState)."""

    GRANTED = "granted"
    DENIED = "denied"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Consent:
    """A person's consent for one channel and purpose, as profile reports it.

    `contact_allowed` is profile's verdict (granted and, with double opt-in, confirmed);
    `pending_confirmation` says a grant still waits for its double opt-in confirmation.
    """

    channel: Channel
    purpose: Purpose
    state: ConsentState
    contact_allowed: bool
    pending_confirmation: bool = False
    updated_at: datetime | None = None


def refusal(purpose: Purpose, channel: Channel, consents: Iterable[Consent]) -> str | None:
    """Why a message of this purpose may not be sent on this channel; None when the consent allows it.

    Of several answers for the same channel and purpose the most recent counts.
    """
    answers = [c for c in consents if c.channel == channel and c.purpose == purpose]
    answer = max(answers, key=lambda c: c.updated_at or _NEVER) if answers else None
    missing = f"no {purpose.value} consent for {channel.value}"
    if purpose == Purpose.TRANSACTIONAL:
        if answer is not None and answer.state in (ConsentState.DENIED, ConsentState.REVOKED):
            return f"{missing}: {answer.state.value}"
        return None
    if answer is None:
        return missing
    if answer.contact_allowed:
        return None
    if answer.state == ConsentState.GRANTED and answer.pending_confirmation:
        return f"{missing}: awaiting double opt-in confirmation"
    if answer.state == ConsentState.GRANTED:
        return f"{missing}: granted but not allowing contact"
    return f"{missing}: {answer.state.value}"
