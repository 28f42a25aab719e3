"""omni_kit's outbox dead letters and scheduled jobs; computed-trait backfills become scheduled jobs.

A definition still backfilling has a job (profile.computed_trait_backfill, keyed by its name) that runs
one slice of persons at a time, instead of a poll of the definitions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_kit.bus import create_outbox_dead_letters, drop_outbox_dead_letters
from omni_kit.scheduler import create_jobs_table, drop_jobs_table

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create outbox_dead_letters and scheduled_jobs, a job per definition still backfilling."""
    create_outbox_dead_letters(op)
    create_jobs_table(op)
    op.execute(
        sa.text(
            "INSERT INTO scheduled_jobs (kind, key, due_at) "
            "SELECT 'profile.computed_trait_backfill', name, created_at FROM computed_traits "
            "WHERE state = 'backfilling'"
        )
    )


def downgrade() -> None:
    """Drop the tables."""
    drop_jobs_table(op)
    drop_outbox_dead_letters(op)
