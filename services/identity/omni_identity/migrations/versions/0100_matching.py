"""Probabilistic matching: person records and their blocking keys, model versions, match decisions.

Revision ID: 0100
Revises: 0002
Create Date: 2025-02-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0100"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT_FIELDS = (
    "source",
    "given_name",
    "surname",
    "date_of_birth",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
)


def _text(name: str) -> sa.Column[str]:
    comment = "YYYYMMDD, or empty." if name == "date_of_birth" else None
    return sa.Column(name, sa.Text, nullable=False, server_default="", comment=comment)


def upgrade() -> None:
    """Create the matcher's tables."""
    op.create_table(
        "person_records",
        sa.Column("id", sa.Uuid, primary_key=True, comment="UUIDv7."),
        sa.Column("person_id", sa.Uuid, nullable=False),
        *(_text(name) for name in _TEXT_FIELDS),
        sa.Column(
            "identifiers",
            ARRAY(sa.Text),
            nullable=False,
            server_default="{}",
            comment="type:value of each identifier.",
        ),
        sa.Column("blocking_keys", ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("person_records_person_id", "person_records", ["person_id"])
    op.create_table(
        "person_record_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column(
            "record_id",
            sa.Uuid,
            sa.ForeignKey("person_records.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("person_record_keys_record_id", "person_record_keys", ["record_id"])
    op.create_table(
        "match_models",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("parameters", JSONB, nullable=False, comment="prior, m and u per field."),
        sa.Column("trained_pairs", sa.BigInteger, nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("converged", sa.Boolean, nullable=False),
        sa.Column("request_id", sa.Text, nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "match_decisions",
        sa.Column("id", sa.Uuid, primary_key=True, comment="UUIDv7, so ids sort by time."),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("position", sa.Integer, nullable=False, comment="The record's place in its request."),
        sa.Column("request_fingerprint", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("person_id", sa.Uuid, nullable=True),
        sa.Column("record_id", sa.Uuid, nullable=True),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("link_threshold", sa.Float, nullable=False),
        sa.Column("review_threshold", sa.Float, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("record", JSONB, nullable=False, comment="The normalised record."),
        sa.Column("candidates", JSONB, nullable=False),
        sa.Column(
            "person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            comment="The decided person and every candidate, for listing by person.",
        ),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "match_decisions_request",
        "match_decisions",
        ["request_id", "position"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_index("match_decisions_person_ids", "match_decisions", ["person_ids"], postgresql_using="gin")


def downgrade() -> None:
    """Drop the matcher's tables."""
    op.drop_table("match_decisions")
    op.drop_table("match_models")
    op.drop_table("person_record_keys")
    op.drop_table("person_records")
