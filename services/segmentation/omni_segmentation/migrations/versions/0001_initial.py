"""Segments, the per-person facts read model, event occurrences, memberships and backfills.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

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

_EMPTY_JSON = sa.text("'{}'::jsonb")


def upgrade() -> None:
    create_bus_tables(op)
    op.create_table(
        "segments",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("condition", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "persons",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("traits", JSONB, nullable=False, server_default=_EMPTY_JSON),
        sa.Column("cart_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("trace_context", JSONB, nullable=False, server_default=_EMPTY_JSON),
        sa.Column("facts_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "persons_next_check",
        "persons",
        ["next_check_at"],
        postgresql_where=sa.text("next_check_at IS NOT NULL"),
    )
    op.create_table(
        "event_occurrences",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "event_occurrences_person_type_time", "event_occurrences", ["person_id", "event_type", "occurred_at"]
    )
    op.create_index("event_occurrences_time", "event_occurrences", ["occurred_at"])
    op.create_table(
        "person_last_events",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("event_type", sa.Text, primary_key=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "merged_persons",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("survivor_id", sa.Uuid, nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("merged_persons_survivor", "merged_persons", ["survivor_id"])
    op.create_table(
        "memberships",
        sa.Column("segment_id", sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True),
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("memberships_person", "memberships", ["person_id"])
    op.create_table(
        "backfills",
        sa.Column("segment_id", sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True),
        sa.Column("after_person_id", sa.Uuid, nullable=True),
        sa.Column("trace_context", JSONB, nullable=False, server_default=_EMPTY_JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("backfills")
    op.drop_index("memberships_person", table_name="memberships")
    op.drop_table("memberships")
    op.drop_index("merged_persons_survivor", table_name="merged_persons")
    op.drop_table("merged_persons")
    op.drop_table("person_last_events")
    op.drop_index("event_occurrences_time", table_name="event_occurrences")
    op.drop_index("event_occurrences_person_type_time", table_name="event_occurrences")
    op.drop_table("event_occurrences")
    op.drop_index("persons_next_check", table_name="persons")
    op.drop_table("persons")
    op.drop_table("segments")
    drop_bus_tables(op)
