"""Profiles, the event timeline, traits, cart lines, consent with its history, and the bus tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from omni_kit.bus import create_bus_tables
from omni_kit.bus.tables import drop_bus_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, *, default_now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.now() if default_now else None,
    )


def upgrade() -> None:
    create_bus_tables(op)
    op.create_table(
        "profiles",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("merged_into", sa.Uuid, nullable=True),
        _timestamp("created_at", default_now=True),
        _timestamp("updated_at", default_now=True),
    )
    op.create_index(
        "profiles_merged_into",
        "profiles",
        ["merged_into"],
        postgresql_where=sa.text("merged_into IS NOT NULL"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=True),
        _timestamp("occurred_at"),
        _timestamp("received_at"),
        sa.Column("identifiers", JSONB, nullable=False),
        sa.Column("properties", JSONB, nullable=False),
        sa.Column("cart_item", JSONB, nullable=True),
    )
    op.create_index(
        "events_timeline", "events", ["person_id", sa.text("occurred_at DESC"), sa.text("id DESC")]
    )
    op.create_table(
        "traits",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", JSONB, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        _timestamp("updated_at"),
    )
    op.create_table(
        "cart_lines",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger, nullable=True),
        sa.Column("currency_code", sa.Text, nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint("quantity > 0", name="cart_lines_quantity_positive"),
    )
    op.create_table(
        "consents",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("channel", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        _timestamp("updated_at"),
    )
    op.create_table(
        "consent_history",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        _timestamp("recorded_at"),
    )
    op.create_index("ix_consent_history_person_id", "consent_history", ["person_id"])


def downgrade() -> None:
    op.drop_table("consent_history")
    op.drop_table("consents")
    op.drop_table("cart_lines")
    op.drop_table("traits")
    op.drop_table("events")
    op.drop_table("profiles")
    drop_bus_tables(op)
