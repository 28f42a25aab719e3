"""Opaque page tokens for every list RPC (page_size/page_token paging).

A token is URL-safe base64 of a small JSON object: the list it was issued for (`kind`), a format version
and the position after which the next page starts. Clients only hand tokens back; a token of another list,
of another format or not one of ours is refused with PageTokenError, which callers answer with
INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any

from omni_kit.ids import parse_uuid

_VERSION = 1


class PageTokenError(ValueError):
    """The token was not issued for this list by this service."""


def pack(kind: str, position: Mapping[str, Any]) -> str:
    """The token of a list `kind` for the page after `position` (JSON-serialisable values; the keys "k" and
    "v" are the token's own)."""
    if "k" in position or "v" in position:
        raise ValueError('"k" and "v" are reserved in page token positions')
    raw = json.dumps({**position, "k": kind, "v": _VERSION}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unpack(token: str, kind: str) -> dict[str, Any]:
    """The position a token of list `kind` holds; PageTokenError for anything else."""
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise PageTokenError("is not a page token of this list") from error
    if not isinstance(body, dict) or body.get("k") != kind or body.get("v") != _VERSION:
        raise PageTokenError("is not a page token of this list")
    return body


def encode_after(kind: str, after: uuid.UUID) -> str:
    """The token for the page after the item with id `after` (lists ordered by a UUIDv7 id)."""
    return pack(kind, {"a": str(after)})


def decode_after(kind: str, token: str) -> uuid.UUID:
    """The id a token of list `kind` points after; PageTokenError for anything else."""
    value = unpack(token, kind).get("a")
    after = parse_uuid(value) if isinstance(value, str) else None
    if after is None:
        raise PageTokenError("is not a page token of this list")
    return after
