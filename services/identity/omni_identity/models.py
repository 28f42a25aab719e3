"""The identity graph's tables: persons, the identifiers they hold, and the lineage of merges."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the identity service's own tables."""


class Person(Base):
    """One customer. A merged person stays as a row whose merged_into leads to the survivor."""

    __tablename__ = "persons"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, comment="UUIDv7, so ids sort by age.")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    merged_into: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("persons.id"), nullable=True, comment="The person this one was merged into."
    )
    merged_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)

    __table_args__ = (
        sa.Index("persons_merged_into", "merged_into", postgresql_where=sa.text("merged_into IS NOT NULL")),
    )


class Identifier(Base):
    """A normalised identifier and the live person holding it; (type, value) is unique across the graph."""

    __tablename__ = "identifiers"

    type: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("persons.id"), nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (sa.Index("identifiers_person_id", "person_id"),)


class Merge(Base):
    """Lineage: one person merged into another, with the identifiers and source that linked them."""

    __tablename__ = "merges"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    survivor_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("persons.id"), nullable=False)
    merged_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("persons.id"), nullable=False)
    cause_identifiers: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    merged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (
        sa.Index("merges_survivor_id", "survivor_id"),
        sa.Index("merges_merged_id", "merged_id"),
    )
