"""Page tokens of decisioning's lists (journeys, offers), on the shared opaque token format."""

from __future__ import annotations

import uuid

from omni_kit.paging import PageTokenError, decode_after, encode_after

JOURNEYS = "decisioning.journeys"
OFFERS = "decisioning.offers"


def encode_token(after: uuid.UUID, kind: str = JOURNEYS) -> str:
    """The token for the page of `kind` (JOURNEYS or OFFERS) that follows the one with id `after`."""
    return encode_after(kind, after)


def decode_token(token: str, kind: str = JOURNEYS) -> uuid.UUID | None:
    """The id a token of `kind` points after, or None when the token is not one of ours (or another list's)."""
    try:
        return decode_after(kind, token)
    except PageTokenError:
        return None
