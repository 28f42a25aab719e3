"""The identity graph: persons, identifiers, merge lineage, and the outbox/inbox.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from omni_kit.bus import create_bus_tables
from omni_kit.bus.tables import drop_bus_tables

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the bus tables and the identity graph."""
    create_bus_tables(op)
    op.create_table(
        "persons",
        sa.Column("id", sa.Uuid, primary_key=True, comment="UUIDv7, so ids sort by age."),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "merged_into",
            sa.Uuid,
            sa.ForeignKey("persons.id"),
            nullable=True,
            comment="The person this one was merged into.",
        ),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "persons_merged_into", "persons", ["merged_into"], postgresql_where=sa.text("merged_into IS NOT NULL")
    )
    op.create_table(
        "identifiers",
        sa.Column("type", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, primary_key=True),
        sa.Column("person_id", sa.Uuid, sa.ForeignKey("persons.id"), nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("identifiers_person_id", "identifiers", ["person_id"])
    op.create_table(
        "merges",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("survivor_id", sa.Uuid, sa.ForeignKey("persons.id"), nullable=False),
        sa.Column("merged_id", sa.Uuid, sa.ForeignKey("persons.id"), nullable=False),
        sa.Column("cause_identifiers", JSONB, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("merges_survivor_id", "merges", ["survivor_id"])
    op.create_index("merges_merged_id", "merges", ["merged_id"])


def downgrade() -> None:
    """Drop the identity graph and the bus tables."""
    op.drop_table("merges")
    op.drop_table("identifiers")
    op.drop_table("persons")
    drop_bus_tables(op)
