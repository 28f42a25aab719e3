"""Page tokens of decisioning's lists (journeys), on the shared opaque token format."""

from __future__ import annotations

import uuid

from omni_kit.paging import PageTokenError, decode_after, encode_after

_JOURNEYS = "decisioning.journeys"


def encode_token(after: uuid.UUID) -> str:
    """The token for the page that follows the journey with id `after`."""
    return encode_after(_JOURNEYS, after)


def decode_token(token: str) -> uuid.UUID | None:
    """The id a token points after, or None when the token is not one of ours."""
    try:
        return decode_after(_JOURNEYS, token)
    except PageTokenError:
        return None
