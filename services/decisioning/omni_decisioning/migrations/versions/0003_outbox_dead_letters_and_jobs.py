"""omni_kit's outbox dead letters (events the relay could not publish, kept with the reason) and scheduled
jobs (durable due work).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from omni_kit.bus import create_outbox_dead_letters, drop_outbox_dead_letters
from omni_kit.scheduler import create_jobs_table, drop_jobs_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create outbox_dead_letters and scheduled_jobs."""
    create_outbox_dead_letters(op)
    create_jobs_table(op)


def downgrade() -> None:
    """Drop them."""
    drop_jobs_table(op)
    drop_outbox_dead_letters(op)
