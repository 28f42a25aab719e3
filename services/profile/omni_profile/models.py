"""The profile database: profiles, the event timeline, traits, cart lines, consent and its history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the profile service's own tables."""


class ProfileRow(Base):
    """One row per person profile has heard of; also the lock that serialises writes to one person.

    A person merged into another keeps its row with merged_into set, so that later events and reads naming
    the old id land on the survivor.
    """

    __tablename__ = "profiles"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    merged_into: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
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


class EventRow(Base):
    """One event on a person's timeline; the sender's id is the key, which makes tracking idempotent."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    channel: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    identifiers: Mapped[list[dict[str, str]]] = mapped_column(JSONB, nullable=False)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    cart_item: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)

    __table_args__ = (
        # The timeline is read newest first per person, and paged by (occurred_at, id).
        sa.Index("events_timeline", "person_id", sa.desc("occurred_at"), sa.desc("id")),
    )


class TraitRow(Base):
    """One trait of a person, with who set it and when."""

    __tablename__ = "traits"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class CartLineRow(Base):
    """One product line of a person's cart, whatever channel put it there."""

    __tablename__ = "cart_lines"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    product_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    quantity: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    unit_price_minor: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    currency_code: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (sa.CheckConstraint("quantity > 0", name="cart_lines_quantity_positive"),)


class ConsentRow(Base):
    """A person's current consent for one channel."""

    __tablename__ = "consents"

    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    state: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class ConsentChangeRow(Base):
    """Every consent change ever recorded, kept as evidence of what the person said and when."""

    __tablename__ = "consent_history"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False, index=True)
    channel: Mapped[str] = mapped_column(sa.Text, nullable=False)
    state: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
