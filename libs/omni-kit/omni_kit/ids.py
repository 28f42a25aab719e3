"""Server-generated, time-sortable ids (UUIDv7)."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    """Return a new UUIDv7: unique, and sortable by creation time."""
    return uuid.UUID(bytes=uuid6.uuid7().bytes)


def new_id_str() -> str:
    """Return a new UUIDv7 as its canonical string."""
    return str(new_id())


def parse_uuid(value: str) -> uuid.UUID | None:
    """Parse a UUID string, returning None when it is not one."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
