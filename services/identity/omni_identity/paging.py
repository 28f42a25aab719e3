"""Opaque page tokens: the position after which the next page starts, never to be parsed by clients.

Each list has its own kind, so a token of one list is refused by another (omni_kit.paging).
"""

from __future__ import annotations

import uuid

from omni_kit.paging import decode_after, encode_after

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use for a requested one (0 means the default; above the maximum means the maximum)."""
    if requested < 0:
        raise ValueError("must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


MERGES = "identity.merges"
IDENTIFIERS = "identity.identifiers"
REFUSED_LINKS = "identity.refused_links"


def encode_token(after: uuid.UUID, kind: str = MERGES) -> str:
    """A token for the page that starts after the row with this id."""
    return encode_after(kind, after)


def decode_token(token: str, kind: str = MERGES) -> uuid.UUID | None:
    """The id a token points after; None for the first page. Raises ValueError for a token we did not make."""
    if not token:
        return None
    return decode_after(kind, token)
