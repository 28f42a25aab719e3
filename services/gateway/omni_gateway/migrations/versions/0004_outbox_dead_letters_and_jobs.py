"""omni_kit's outbox dead letters and scheduled jobs; delivery retries become scheduled jobs.

A queued message's next attempt is a job (gateway.delivery_attempt, keyed by the message id) instead of
a poll of messages.next_attempt_at, which stays as what GetMessage shows; the index the poll used goes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_kit.bus import create_outbox_dead_letters, drop_outbox_dead_letters
from omni_kit.scheduler import create_jobs_table, drop_jobs_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create outbox_dead_letters and scheduled_jobs, a job for every queued message, drop messages_due."""
    create_outbox_dead_letters(op)
    create_jobs_table(op)
    op.execute(
        sa.text(
            "INSERT INTO scheduled_jobs (kind, key, due_at, trace_context) "
            "SELECT 'gateway.delivery_attempt', CAST(id AS text), "
            "greatest(coalesce(next_attempt_at, now()), coalesce(claimed_until, now())), trace_context "
            "FROM messages WHERE status = 'queued'"
        )
    )
    op.drop_index("messages_due", table_name="messages")


def downgrade() -> None:
    """Bring back the poll's index; drop the tables."""
    op.create_index(
        "messages_due", "messages", ["next_attempt_at"], postgresql_where=sa.text("status = 'queued'")
    )
    drop_jobs_table(op)
    drop_outbox_dead_letters(op)
