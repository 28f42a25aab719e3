"""Journeys, offers, read models (memberships, consents, person aliases), journey runs, decision log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from omni_kit.bus import create_bus_tables
from omni_kit.bus.tables import drop_bus_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_bus_tables(op)
    op.create_table(
        "journeys",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("trigger_segment_id", sa.Uuid, nullable=False),
        sa.Column("channels", ARRAY(sa.SmallInteger), nullable=False),
        sa.Column("template_id", sa.Text, nullable=False),
        sa.Column("create_time", _TS, nullable=False),
    )
    op.create_index("ix_journeys_trigger_segment_id", "journeys", ["trigger_segment_id"])
    op.create_table(
        "offers",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("touchpoints", ARRAY(sa.Text), nullable=False),
        sa.Column("segment_id", sa.Uuid, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("create_time", _TS, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("segment_id", sa.Uuid, primary_key=True),
        sa.Column("is_member", sa.Boolean, nullable=False),
        sa.Column("as_of", _TS, nullable=False),
    )
    op.create_table(
        "consents",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("channel", sa.SmallInteger, primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("update_time", _TS, nullable=False),
    )
    op.create_table(
        "person_aliases",
        sa.Column("merged_person_id", sa.Uuid, primary_key=True),
        sa.Column("survivor_person_id", sa.Uuid, nullable=False),
    )
    op.create_index("ix_person_aliases_survivor_person_id", "person_aliases", ["survivor_person_id"])
    op.create_table(
        "journey_runs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("journey_id", sa.Uuid, sa.ForeignKey("journeys.id"), nullable=False),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("trigger_event_id", sa.Uuid, nullable=False),
        sa.Column("trigger_time", _TS, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=True),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("create_time", _TS, nullable=False),
        sa.UniqueConstraint("journey_id", "person_id", "trigger_event_id", name="journey_runs_trigger_key"),
    )
    op.create_index("journey_runs_by_person", "journey_runs", ["journey_id", "person_id", "trigger_time"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("touchpoint", sa.Text, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.Column("context", JSONB, nullable=False),
        sa.Column("offer_ids", ARRAY(sa.Uuid), nullable=False),
        sa.Column("create_time", _TS, nullable=False),
    )
    op.create_index("ix_decisions_person_id", "decisions", ["person_id"])


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_table("journey_runs")
    op.drop_table("person_aliases")
    op.drop_table("consents")
    op.drop_table("memberships")
    op.drop_table("offers")
    op.drop_table("journeys")
    drop_bus_tables(op)
