"""The profile database: profiles (with cart and computed-trait state), the event timeline, traits and their
history, consent and its history, computed-trait definitions and the
segment memberships read model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_kit.lineage import LineageTable

CART_EVENT_TYPES = ("cart_item_added", "cart_item_removed", "order_completed")


class Base(DeclarativeBase):
    """Declarative base of the profile service's own tables."""


class ProfileRow(Base):
    """One row per person profile has heard of; also the lock that serialises writes to one person.

    A person merged into another keeps its row with merged_into set, so that later events and reads naming
    the old id land on the survivor. An erased person keeps its row with erased_at set (a tombstone) and
    nothing else. The cart and the computed-trait state live here, so that the statement that locks a
    batch's persons also reads what the batch changes.

    merged_into and erased_at are profile's lineage table (PROFILE_LINEAGE): omni_kit.lineage writes them as
    it follows identity, as other services' person_lineage. They live on this row, the lock every write to a
    person takes, so that the statement that locks a person reads where it leads in the version it locked
    (a merge committed while a batch waited for the lock is seen); in a table of their own a locking read
    would see the lineage of the snapshot it started with.
    """

    __tablename__ = "profiles"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    merged_into: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    cart: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=sa.text("'{}'::jsonb"))
    cart_as_of: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    computed: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
    )
    erased_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )

    __table_args__ = (
        # Merges re-point the persons merged into a merged person, found by this index.
        sa.Index("profiles_merged_into", "merged_into", postgresql_where=sa.text("merged_into IS NOT NULL")),
    )


_PROFILES = cast(sa.Table, ProfileRow.__table__)
PROFILE_LINEAGE = LineageTable(
    _PROFILES, _PROFILES.c.person_id, _PROFILES.c.merged_into, _PROFILES.c.erased_at, _PROFILES.c.updated_at
)
"""Where profile keeps identity's lineage for omni_kit.lineage: the columns of the profiles row."""


class EventRow(Base):
    """One event on a person's timeline; (source, sender's id) is the key, which makes tracking idempotent."""

    __tablename__ = "events"

    source: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    channel: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    identifiers: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    """NULL when `wire` holds the event (its properties are read from there): kept once, not twice."""
    cart_item: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    wire: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    """The event encoded as omni.profile.v1.Event (without person_id, which merges change): reads show it
    as it is. NULL for events recorded before it was kept."""
    origin_person_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    """The person the event was on before a merge moved it (the first such move: a chain of merges keeps
    it); NULL when no merge moved it, or an unmerge gave it back there. An unmerge gives back the events
    whose origin is the restored person."""
    fingerprint: Mapped[bytes | None] = mapped_column(sa.LargeBinary, nullable=True)
    """SHA-256 of the event's content as its sender described it (wire.event_from_proto): the same key sent
    again with another fingerprint reuses the id for other content. NULL for events recorded before it was
    kept and for those that did not come as protobuf (gateway outcomes): they compare equal to anything."""

    __table_args__ = (
        # The timeline is read newest first per person, and paged by (occurred_at, id, source).
        sa.Index("events_timeline", "person_id", sa.desc("occurred_at"), sa.desc("id"), sa.desc("source")),
        # A cart is recomputed from its person's cart events when one arrives out of order.
        sa.Index(
            "events_cart",
            "person_id",
            "occurred_at",
            postgresql_where=sa.text("type IN ('cart_item_added', 'cart_item_removed', 'order_completed')"),
        ),
    )


class TraitRow(Base):
    """One trait of a person, with who set it and when."""

    __tablename__ = "traits"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class TraitChangeRow(Base):
    """Every change of a trait: the value before and after (NULL = not set), who made it and when."""

    __tablename__ = "trait_changes"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    old_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    new_value: Mapped[Any] = mapped_column(JSONB, nullable=True)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    changed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (sa.Index("trait_changes_history", "person_id", sa.desc("changed_at"), sa.desc("id")),)


class ConsentRow(Base):
    """A person's current consent for one channel and purpose."""

    __tablename__ = "consents"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    purpose: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    state: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    double_opt_in: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class ConsentChangeRow(Base):
    """Every consent change ever recorded, kept as evidence of what the person said and when."""

    __tablename__ = "consent_history"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    channel: Mapped[str] = mapped_column(sa.Text, nullable=False)
    purpose: Mapped[str] = mapped_column(sa.Text, nullable=False)
    state: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    double_opt_in: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (sa.Index("consent_history_person", "person_id", sa.desc("recorded_at"), sa.desc("id")),)


CONTACT_VERDICT_VERSIONS = sa.Sequence("contact_verdict_versions", metadata=Base.metadata)
"""Versions of contact verdict announcements: one sequence for all persons, taken with the person locked."""


class ComputedTraitRow(Base):
    """A computed trait's definition; backfill_after is where its backfill got to (by person id)."""

    __tablename__ = "computed_traits"

    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    event_type: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    channels: Mapped[list[str]] = mapped_column(
        ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")
    )
    property: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    window_days: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    per_channel: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    currency_code: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    description: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    state: Mapped[str] = mapped_column(sa.Text, nullable=False)
    backfill_after: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


class SegmentMembershipRow(Base):
    """Whether a person is in a segment, as segmentation last announced it (a read model).

    Exits keep the row (member false) so that an announcement older than the last one applied is ignored.
    """

    __tablename__ = "segment_memberships"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    segment_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    segment_name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    member: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    changed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
