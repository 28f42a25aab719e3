"""Opaque page tokens of the timeline: the position (occurred_at, id) of the last event of a page.

The token is bound to the person it was issued for, so a token cannot be replayed against another
timeline. Its format is ours to change: clients only hand it back.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VERSION = 1


class BadPageToken(ValueError):
    """The page token was not issued by this service for this person."""


@dataclass(frozen=True)
class TimelinePosition:
    """Where a timeline page ended: events strictly older than this come next."""

    occurred_at: datetime
    event_id: str


def encode(person_id: str, position: TimelinePosition) -> str:
    """The opaque token for the page after position."""
    micros = (position.occurred_at - _EPOCH) // timedelta(microseconds=1)
    body = json.dumps(
        {"v": _VERSION, "p": person_id, "t": micros, "i": position.event_id}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(person_id: str, token: str) -> TimelinePosition:
    """The position a token encodes; BadPageToken if it is malformed or was issued for another person."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise BadPageToken("the page token is malformed") from error
    if not isinstance(body, dict) or body.get("v") != _VERSION:
        raise BadPageToken("the page token is malformed")
    micros, event_id, owner = body.get("t"), body.get("i"), body.get("p")
    if not isinstance(micros, int) or isinstance(micros, bool) or not isinstance(event_id, str):
        raise BadPageToken("the page token is malformed")
    if owner != person_id:
        raise BadPageToken("the page token belongs to another person's timeline")
    try:
        occurred_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as error:
        raise BadPageToken("the page token is malformed") from error
    return TimelinePosition(occurred_at=occurred_at, event_id=event_id)
