"""Segmentation's tables: segment definitions, the per-person facts read model, and memberships.

Where merged ids lead, and the tombstones of forgotten ones, are in omni_kit.lineage's person_lineage."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_kit import contact


class Base(DeclarativeBase):
    """Declarative base of segmentation's own tables."""


class SegmentRow(Base):
    """A segment definition; its condition is the protobuf JSON form of omni.segmentation.v1.Condition."""

    __tablename__ = "segments"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    description: Mapped[str] = mapped_column(sa.Text, server_default="")
    condition: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # One more each time an update changes the condition.
    version: Mapped[int] = mapped_column(sa.BigInteger, server_default="1")
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # Set when the segment is archived: it has no members and is evaluated no more.
    archived_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class PersonRow(Base):
    """What segmentation knows of a person, fed by profile's events; one row per live (unmerged) person."""

    __tablename__ = "persons"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    traits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    cart_units: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    # Profile's computed traits (orders_30d, lifetime_value, custom ones), as its last change announced them.
    computed_traits: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    # W3C trace context of the last event that changed the person: clock-driven evaluations continue it.
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    # When the profile change last applied happened; an older change arriving late is ignored.
    facts_changed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The same for the computed traits, which profile announces apart from traits and cart.
    computed_changed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The next instant at which a membership may change by time alone; the clock re-evaluates then (a
    # scheduled job, segmentation.person_check, is due at the same time).
    next_check_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class EventOccurrenceRow(Base):
    """One event a person did, kept as long as some segment may count it."""

    __tablename__ = "event_occurrences"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.Text)
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # The person the event named, when that person had been merged into person_id (directly, or moved here
    # by a later merge); NULL when it named person_id itself. An unmerge gives these occurrences back.
    origin_person_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    # The event's channel (an omni.common.v1.Channel number; 0 when not given).
    channel: Mapped[int] = mapped_column(sa.SmallInteger, server_default="0")
    # The event's properties that segment rules name, when it had any (nothing else of them is kept).
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class LastEventRow(Base):
    """The latest and first occurrence of each event type per person, kept forever (one row per type)."""

    __tablename__ = "person_last_events"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    last_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # NULL when unknown (recorded before migration 0010 and purged since).
    first_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class MembershipRow(Base):
    """A person's current membership of a segment."""

    __tablename__ = "memberships"

    segment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class BackfillRow(Base):
    """A new segment still being evaluated for the persons known before it: a cursor over person ids."""

    __tablename__ = "backfills"

    segment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True)
    after_person_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    # Trace context of the CreateSegment call, so the backfill's enter events continue its trace.
    trace_context: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class SegmentExitRow(Base):
    """When a person last left a segment (kept while the segment is, so "out since when" has an answer)."""

    __tablename__ = "segment_exits"

    segment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    exited_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class SegmentSizeRow(Base):
    """A segment's member count on a UTC day (the last count taken that day)."""

    __tablename__ = "segment_sizes"

    segment_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    member_count: Mapped[int] = mapped_column(sa.BigInteger)
    counted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class SeenNameRow(Base):
    """An event type or trait name segmentation has seen in profile's events (kind "event_type" or
    "trait"): a rule naming one never seen is warned about."""

    __tablename__ = "seen_names"

    kind: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


contact_verdicts = contact.define_table(Base.metadata)
"""Profile's contact verdicts as last announced, fed by profile.contact_verdict_changed (omni_kit.contact)."""


sa.Index(
    "event_occurrences_person_type_time",
    EventOccurrenceRow.person_id,
    EventOccurrenceRow.event_type,
    EventOccurrenceRow.occurred_at,
)
sa.Index("event_occurrences_time", EventOccurrenceRow.occurred_at)
sa.Index("memberships_person", MembershipRow.person_id)
sa.Index("segment_exits_person", SegmentExitRow.person_id)
