"""The gateway's first schema: outbox/inbox, templates and the message log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
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

CHANNELS = "('web', 'app', 'email', 'sms', 'push', 'store', 'call_center')"
STATUSES = "('queued', 'sent', 'failed')"


def upgrade() -> None:
    create_bus_tables(op)
    op.create_table(
        "templates",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text, nullable=False, server_default=""),
        sa.Column("body_text", sa.Text, nullable=False),
        sa.Column("body_html", sa.Text, nullable=False, server_default=""),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="templates_channel"),
        sa.CheckConstraint("id ~ '^[a-z0-9-]{1,64}$'", name="templates_id_format"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("request_id", sa.Text, nullable=False, unique=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("template_id", sa.Text, nullable=False),
        sa.Column("variables", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("journey_id", sa.Text, nullable=False, server_default=""),
        sa.Column("recipient", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trace_context", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="messages_channel"),
        sa.CheckConstraint(f"status IN {STATUSES}", name="messages_status"),
    )
    # The retry loop's question: queued messages whose next attempt is due.
    op.create_index(
        "messages_due",
        "messages",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index("messages_person", "messages", ["person_id", "create_time"])


def downgrade() -> None:
    op.drop_index("messages_person", table_name="messages")
    op.drop_index("messages_due", table_name="messages")
    op.drop_table("messages")
    op.drop_table("templates")
    drop_bus_tables(op)
