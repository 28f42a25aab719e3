"""Multi-step journeys: a journey's draft, state and versions; runs and the steps they took; the profile facts
they look at (tracked events of the types they name, traits).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Widen journeys to hold multi-step ones; create their versions, runs, steps and read models."""
    for column in ("trigger_segment_id", "channels", "template_id"):
        op.alter_column("journeys", column, nullable=True)
    op.add_column("journeys", sa.Column("multi_step", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("journeys", sa.Column("state", sa.Text, nullable=False, server_default="published"))
    op.add_column("journeys", sa.Column("version", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("journeys", sa.Column("draft", JSONB, nullable=True))
    op.add_column("journeys", sa.Column("update_time", _TZ, nullable=True))
    op.add_column("journeys", sa.Column("entry_segment_id", sa.Uuid, nullable=True))
    op.add_column("journeys", sa.Column("entry_event_type", sa.Text, nullable=True))
    op.add_column("journeys", sa.Column("event_types", ARRAY(sa.Text), nullable=True))
    op.create_index(
        "journeys_by_entry_event",
        "journeys",
        ["entry_event_type"],
        postgresql_where=sa.text("entry_event_type IS NOT NULL"),
    )
    op.create_index(
        "journeys_by_entry_segment",
        "journeys",
        ["entry_segment_id"],
        postgresql_where=sa.text("entry_segment_id IS NOT NULL"),
    )
    op.create_table(
        "journey_versions",
        sa.Column("journey_id", sa.Uuid, sa.ForeignKey("journeys.id"), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("publish_time", _TZ, nullable=False),
    )
    op.create_table(
        "journey_flow_runs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("journey_id", sa.Uuid, sa.ForeignKey("journeys.id"), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("trigger_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("current_step", sa.Text, nullable=True),
        sa.Column("due_at", _TZ, nullable=True),
        sa.Column("visits", JSONB, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("start_time", _TZ, nullable=False),
        sa.Column("end_time", _TZ, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
        sa.UniqueConstraint("journey_id", "person_id", "trigger_id", name="journey_flow_runs_trigger_key"),
    )
    op.create_index("journey_flow_runs_by_person", "journey_flow_runs", ["person_id", "journey_id", "key"])
    op.create_index(
        "journey_flow_runs_active",
        "journey_flow_runs",
        ["journey_id"],
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_table(
        "journey_flow_steps",
        sa.Column(
            "run_id", sa.Uuid, sa.ForeignKey("journey_flow_runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("step_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("next_step", sa.Text, nullable=True),
    )
    op.create_table(
        "journey_person_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("occurred_at", _TZ, nullable=False),
        sa.Column("properties", JSONB, nullable=False),
    )
    op.create_index(
        "journey_person_events_by_type", "journey_person_events", ["person_id", "type", "occurred_at"]
    )
    op.create_table(
        "journey_person_traits",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("traits", JSONB, nullable=False),
        sa.Column("as_of", _TZ, nullable=False),
    )


def downgrade() -> None:
    """Drop the multi-step journeys (and their runs) and narrow journeys again."""
    op.drop_table("journey_person_traits")
    op.drop_table("journey_person_events")
    op.drop_table("journey_flow_steps")
    op.drop_table("journey_flow_runs")
    op.drop_table("journey_versions")
    op.execute("DELETE FROM journeys WHERE multi_step")
    op.drop_index("journeys_by_entry_segment", table_name="journeys")
    op.drop_index("journeys_by_entry_event", table_name="journeys")
    for column in (
        "event_types",
        "entry_event_type",
        "entry_segment_id",
        "update_time",
        "draft",
        "version",
        "state",
        "multi_step",
    ):
        op.drop_column("journeys", column)
    for column in ("trigger_segment_id", "channels", "template_id"):
        op.alter_column("journeys", column, nullable=False)
