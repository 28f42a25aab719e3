"""The matcher's tables: the records filed under persons, their blocking keys, model versions, decisions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class MatchingBase(DeclarativeBase):
    """Declarative base of the matcher's own tables."""


def _text(comment: str | None = None) -> Mapped[str]:
    return mapped_column(sa.Text, nullable=False, server_default="", comment=comment)


class PersonRecordRow(MatchingBase):
    """A record filed under a person, in normalised form; missing values are empty strings."""

    __tablename__ = "person_records"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, comment="UUIDv7.")
    person_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)
    source: Mapped[str] = _text()
    given_name: Mapped[str] = _text()
    surname: Mapped[str] = _text()
    date_of_birth: Mapped[str] = _text("YYYYMMDD, or empty.")
    street_number: Mapped[str] = _text()
    address_1: Mapped[str] = _text()
    address_2: Mapped[str] = _text()
    suburb: Mapped[str] = _text()
    postcode: Mapped[str] = _text()
    state: Mapped[str] = _text()
    identifiers: Mapped[list[str]] = mapped_column(
        ARRAY(sa.Text), nullable=False, server_default="{}", comment="type:value of each identifier."
    )
    blocking_keys: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), nullable=False)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    filed_under: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid,
        nullable=False,
        comment="The person the record was filed under; its merged_into chain leads to person_id.",
    )

    # person_id follows merges and unmerges of the graph: a trigger on persons (migration 0101) moves it.
    __table_args__ = (
        sa.Index("person_records_person_id", "person_id"),
        sa.Index("person_records_filed_under", "filed_under"),
    )


class PersonRecordKey(MatchingBase):
    """The blocking index: one row per record and blocking key, so a key's block is one index range."""

    __tablename__ = "person_record_keys"

    key: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    record_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("person_records.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (sa.Index("person_record_keys_record_id", "record_id"),)


class MatchModelRow(MatchingBase):
    """A trained model version; the highest version is the one in use."""

    __tablename__ = "match_models"

    version: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, comment="prior, m and u per field."
    )
    trained_pairs: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    iterations: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    converged: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    request_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True, unique=True)
    request_fingerprint: Mapped[bytes | None] = mapped_column(
        sa.LargeBinary,
        nullable=True,
        comment="omni_kit.idempotency's hash of the training request; NULL for versions trained before.",
    )
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class MatchDecisionRow(MatchingBase):
    """Lineage: one decision about one record, with the scores, the model and the thresholds behind it."""

    __tablename__ = "match_decisions"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, comment="UUIDv7, so ids sort by time.")
    request_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    position: Mapped[int] = mapped_column(
        sa.Integer, nullable=False, comment="The record's place in its request."
    )
    request_fingerprint: Mapped[str] = mapped_column(sa.Text, nullable=False)
    decision: Mapped[str] = mapped_column(sa.Text, nullable=False)
    person_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    record_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    probability: Mapped[float] = mapped_column(sa.Float, nullable=False)
    model_version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    link_threshold: Mapped[float] = mapped_column(sa.Float, nullable=False)
    review_threshold: Mapped[float] = mapped_column(sa.Float, nullable=False)
    source: Mapped[str] = _text()
    record: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, comment="The normalised record.")
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    person_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(sa.Uuid),
        nullable=False,
        comment="The decided person and every candidate, for listing by person.",
    )
    decided_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    identifier_person_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(sa.Uuid),
        nullable=False,
        server_default="{}",
        comment="The persons of the graph holding the record's identifiers when it was decided.",
    )
    proposed_merge_person_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(sa.Uuid),
        nullable=False,
        server_default="{}",
        comment="Cluster repair: persons the record matched that match each other, proposed for a merge.",
    )
    settles_decision_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, nullable=True, comment="For a decision made by settling a review: the review."
    )
    settled_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), nullable=True, comment="When a review was settled."
    )
    settled_by: Mapped[str] = _text()
    settle_reason: Mapped[str] = _text()
    settled_decision_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, nullable=True, comment="For a settled review: the decision that filed its record."
    )
    settled_outcome: Mapped[str] = _text("For a settled review: link or new_person.")
    settled_person_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, nullable=True, comment="For a settled review: the person its record was filed under."
    )

    __table_args__ = (
        sa.Index(
            "match_decisions_request",
            "request_id",
            "position",
            unique=True,
            postgresql_where=sa.text("request_id IS NOT NULL"),
        ),
        sa.Index("match_decisions_person_ids", "person_ids", postgresql_using="gin"),
        sa.Index(
            "match_decisions_open_reviews",
            "id",
            postgresql_where=sa.text("decision = 'review' AND settled_at IS NULL"),
        ),
    )
