"""The identity graph's tables: persons, the identifiers they hold, the lineage of merges and refused links,
and what erasure leaves: tombstones and the audit of who asked. Operations makes operator calls idempotent."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB
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
    forgotten_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True, comment="When the person was erased (ForgetPerson)."
    )

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
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False, comment="UUIDv7: sorts by attach time.")
    attached_to: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid,
        nullable=False,
        comment="The person it was attached (or split back) to; its merged_into chain leads to person_id.",
    )
    via: Mapped[list[uuid.UUID] | None] = mapped_column(
        ARRAY(sa.Uuid), nullable=True, comment="Ids of the identifiers the attaching resolve matched."
    )
    attachment: Mapped[str] = mapped_column(
        sa.Text, nullable=False, comment="new_person, matched or unmerge: how it came to attached_to."
    )

    # (person_id, id) serves listing a person's identifiers and finding them by id within the person; ids
    # are UUIDv7, so a unique index on id alone would only slow every insert down.
    __table_args__ = (sa.Index("identifiers_person_id", "person_id", "id"),)


class Merge(Base):
    """Lineage: one person merged into another, with the identifiers and source that linked them."""

    __tablename__ = "merges"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    survivor_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("persons.id"), nullable=False)
    merged_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("persons.id"), nullable=False)
    cause_identifiers: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    merged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    rule: Mapped[str] = mapped_column(
        sa.Text,
        nullable=False,
        server_default="shared_identifiers",
        comment="shared_identifiers or operator.",
    )
    reason: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    undone_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True, comment="When an unmerge undid the merge."
    )
    undo_reason: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    reference: Mapped[str] = mapped_column(
        sa.Text,
        nullable=False,
        server_default="",
        comment="The resolve request's reference (e.g. the event that carried the identifiers) or the "
        "operator call's request id.",
    )

    __table_args__ = (
        sa.Index("merges_survivor_id", "survivor_id"),
        sa.Index("merges_merged_id", "merged_id"),
        # Erasure finds the merges whose cause names a forgotten identifier.
        sa.Index(
            "merges_cause_identifiers",
            "cause_identifiers",
            postgresql_using="gin",
            postgresql_ops={"cause_identifiers": "jsonb_path_ops"},
        ),
    )


class RefusedLinkRow(Base):
    """A link a rule refused: the identifier set aside, the persons, the rule; repeats update one row."""

    __tablename__ = "refused_links"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    value: Mapped[str] = mapped_column(sa.Text, nullable=False)
    holder_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    person_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(sa.Uuid), nullable=False, comment="Every person involved: for listing by person."
    )
    resolved_person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    rule: Mapped[str] = mapped_column(sa.Text, nullable=False)
    rule_type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    description: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str] = mapped_column(sa.Text, nullable=False)
    refused_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    last_refused_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)

    __table_args__ = (
        sa.Index(
            "refused_links_refusal", "type", "value", "resolved_person_id", "rule", "rule_type", unique=True
        ),
        sa.Index("refused_links_person_ids", "person_ids", postgresql_using="gin"),
    )


class Tombstone(Base):
    """An identifier of a forgotten person, as a keyed one-way hash: never the value itself."""

    __tablename__ = "tombstones"

    hash: Mapped[bytes] = mapped_column(BYTEA, primary_key=True, comment="HMAC-SHA256 of type and value.")
    type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    erasure_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    forgotten_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class Erasure(Base):
    """The audit of one erasure: who asked, when, why, and how much was removed."""

    __tablename__ = "erasures"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False, comment="The live person erased.")
    person_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(sa.Uuid), nullable=False, comment="It and every person merged into it."
    )
    requested_by: Mapped[str] = mapped_column(sa.Text, nullable=False)
    reason: Mapped[str] = mapped_column(sa.Text, nullable=False)
    request_id: Mapped[str] = mapped_column(sa.Text, nullable=False)
    identifier_count: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    forgotten_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    __table_args__ = (sa.Index("erasures_person_id", "person_id"),)
