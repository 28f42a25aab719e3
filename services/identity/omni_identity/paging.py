"""Opaque page tokens: the position after which the next page starts, never to be parsed by clients.

Each list has its own two-byte kind, so a token of one list is refused by another.
"""

from __future__ import annotations

import base64
import binascii
import uuid

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use for a requested one (0 means the default; above the maximum means the maximum)."""
    if requested < 0:
        raise ValueError("must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


MERGES = b"m1"
IDENTIFIERS = b"i1"
REFUSED_LINKS = b"r1"


def encode_token(after: uuid.UUID, kind: bytes = MERGES) -> str:
    """A token for the page that starts after the row with this id."""
    return base64.urlsafe_b64encode(kind + after.bytes).decode().rstrip("=")


def decode_token(token: str, kind: bytes = MERGES) -> uuid.UUID | None:
    """The id a token points after; None for the first page. Raises ValueError for a token we did not make."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("is not a page token of this list") from error
    if len(raw) != 18 or not raw.startswith(kind):
        raise ValueError("is not a page token of this list")
    return uuid.UUID(bytes=raw[2:])
