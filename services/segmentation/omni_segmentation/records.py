"""Plain records of what segmentation stores, as the repository returns them to the domain, and of the
profile events it applies."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SegmentRecord:
    """A stored segment."""

    id: uuid.UUID
    name: str
    description: str
    condition: dict[str, Any]
    created_at: datetime
    version: int = 1
    updated_at: datetime | None = None
    archived_at: datetime | None = None


@dataclass(frozen=True)
class PersonRecord:
    """A person's stored facts (without events)."""

    person_id: uuid.UUID
    traits: dict[str, Any] = field(default_factory=dict)
    cart_units: int = 0
    trace_context: dict[str, str] = field(default_factory=dict)
    facts_changed_at: datetime | None = None
    next_check_at: datetime | None = None
    computed_traits: dict[str, Any] = field(default_factory=dict)
    computed_changed_at: datetime | None = None


@dataclass(frozen=True)
class MembershipRecord:
    """A person's membership of a segment, with the segment's name."""

    segment_id: uuid.UUID
    segment_name: str
    entered_at: datetime


@dataclass(frozen=True)
class BackfillRecord:
    """A segment being evaluated for the persons known before it, up to (excluding) after_person_id."""

    segment_id: uuid.UUID
    after_person_id: uuid.UUID | None
    trace_context: dict[str, str]


@dataclass(frozen=True)
class TrackedEvent:
    """A profile.event_tracked as segmentation applies it."""

    person_id: uuid.UUID
    event_id: str
    event_type: str
    occurred_at: datetime
    trace_context: dict[str, str]
    channel: int = 0
    properties: Mapping[str, Any] | None = None
    """The event's properties as profile sent them (a protobuf Struct's fields: values are
    google.protobuf.Value); the recorder keeps only those rules name."""


@dataclass(frozen=True)
class ProfileChange:
    """A profile.profile_changed as segmentation applies it (None leaves that part as it is); after an
    unmerge, also the events profile moved to the person and whom it took them from."""

    person_id: uuid.UUID
    traits: Mapping[str, Any] | None
    cart_units: int | None
    changed_at: datetime
    trace_context: dict[str, str]
    moved_event_ids: tuple[str, ...] = ()
    moved_from: uuid.UUID | None = None
    computed_traits: Mapping[str, Any] | None = None

    @property
    def changes_facts(self) -> bool:
        """Whether it brings traits, a cart or computed traits (not only moved events)."""
        return self.traits is not None or self.cart_units is not None or self.computed_traits is not None
