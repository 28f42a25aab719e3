"""omni_kit's outbox dead letters and scheduled jobs; the clock's work becomes scheduled jobs.

A person's next check (persons.next_check_at, kept) is a job (segmentation.person_check, keyed by the
person id) instead of a poll of the persons table, whose index goes; a pending backfill is a job
(segmentation.backfill, keyed by the segment id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from omni_kit.bus import create_outbox_dead_letters, drop_outbox_dead_letters
from omni_kit.scheduler import create_jobs_table, drop_jobs_table

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create outbox_dead_letters and scheduled_jobs, a job per due person and pending backfill."""
    create_outbox_dead_letters(op)
    create_jobs_table(op)
    op.execute(
        sa.text(
            "INSERT INTO scheduled_jobs (kind, key, due_at) "
            "SELECT 'segmentation.person_check', CAST(person_id AS text), next_check_at "
            "FROM persons WHERE next_check_at IS NOT NULL"
        )
    )
    op.execute(
        sa.text(
            "INSERT INTO scheduled_jobs (kind, key, due_at, trace_context) "
            "SELECT 'segmentation.backfill', CAST(segment_id AS text), created_at, trace_context FROM backfills"
        )
    )
    op.drop_index("persons_next_check", table_name="persons")


def downgrade() -> None:
    """Bring back the poll's index; drop the tables."""
    op.create_index(
        "persons_next_check",
        "persons",
        ["next_check_at"],
        postgresql_where=sa.text("next_check_at IS NOT NULL"),
    )
    drop_jobs_table(op)
    drop_outbox_dead_letters(op)
