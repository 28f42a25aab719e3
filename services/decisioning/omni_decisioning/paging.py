"""Opaque page tokens: the position after the last item of a page, not meant to be read by callers."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

from omni_kit.ids import parse_uuid


def encode_token(after: uuid.UUID) -> str:
    """The token for the page that follows the item with id `after`."""
    raw = json.dumps({"v": 1, "after": str(after)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> uuid.UUID | None:
    """The id a token points after, or None when the token is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("after"), str):
        return None
    return parse_uuid(data["after"])
