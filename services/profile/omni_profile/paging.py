"""Opaque page tokens: where the last item of a page was, bound to the list it was issued for.

A timeline token holds the position (occurred_at, id, source) of the last event of a page; a history token
the (time, id) of the last change, and the kind of history; a name token the last name of a page. Tokens
are bound to the person (or list) they were issued for, so one cannot be replayed against another. Their
format is ours to change: clients only hand them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from omni_kit.paging import PageTokenError, pack, unpack

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadPageToken(ValueError):
    """The page token was not issued by this service for this list."""


@dataclass(frozen=True)
class TimelinePosition:
    """Where a timeline page ended: events strictly older than this come next.

    source is None in tokens issued before events had sources; those page by (occurred_at, id).
    """

    occurred_at: datetime
    event_id: str
    source: str | None = None


@dataclass(frozen=True)
class Position:
    """Where a page of a history ended: (time, id) of its last entry."""

    at: datetime
    key: str


def _pack(kind: str, body: dict[str, Any]) -> str:
    return pack(f"profile.{kind}", body)


def _unpack(kind: str, token: str) -> dict[str, Any]:
    try:
        return unpack(token, f"profile.{kind}")
    except PageTokenError as error:
        raise BadPageToken("the page token is malformed") from error


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: Any) -> datetime:
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise BadPageToken("the page token is malformed")
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError as error:
        raise BadPageToken("the page token is malformed") from error


def _check_owner(body: dict[str, Any], owner: str) -> None:
    if body.get("p") != owner:
        raise BadPageToken("the page token belongs to another person's timeline")


def encode(person_id: str, position: TimelinePosition) -> str:
    """The opaque token for the timeline page after position."""
    body: dict[str, Any] = {"p": person_id, "t": _micros(position.occurred_at), "i": position.event_id}
    if position.source is not None:
        body["s"] = position.source
    return _pack("timeline", body)


def decode(person_id: str, token: str) -> TimelinePosition:
    """The timeline position a token encodes; BadPageToken if it is malformed or another person's."""
    body = _unpack("timeline", token)
    event_id, source = body.get("i"), body.get("s")
    if not isinstance(event_id, str) or not (source is None or isinstance(source, str)):
        raise BadPageToken("the page token is malformed")
    occurred_at = _moment(body.get("t"))
    _check_owner(body, person_id)
    return TimelinePosition(occurred_at=occurred_at, event_id=event_id, source=source)


def encode_position(owner: str, kind: str, position: Position) -> str:
    """The opaque token for the page of a history (kind: "traits", "consents") after position."""
    return _pack(kind, {"p": owner, "t": _micros(position.at), "i": position.key})


def decode_position(owner: str, kind: str, token: str) -> Position:
    """The history position a token encodes; BadPageToken if malformed, another list's or another's."""
    body = _unpack(kind, token)
    key = body.get("i")
    if not isinstance(key, str):
        raise BadPageToken("the page token is malformed")
    at = _moment(body.get("t"))
    _check_owner(body, owner)
    return Position(at=at, key=key)


def encode_name(kind: str, name: str) -> str:
    """The opaque token for the page of a list by name (kind: "computed_traits") after name."""
    return _pack(kind, {"n": name})


def decode_name(kind: str, token: str) -> str:
    """The name a list token encodes; BadPageToken if it is malformed or another list's."""
    body = _unpack(kind, token)
    name = body.get("n")
    if not isinstance(name, str):
        raise BadPageToken("the page token is malformed")
    return name
