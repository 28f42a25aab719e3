"""The contact verdicts' republish queue becomes jobs of omni-kit's scheduler
(profile.contact_verdict_republish, one per person), the one mechanism for due work; the table goes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KIND = "profile.contact_verdict_republish"


def upgrade() -> None:
    """Make a job of every person still queued, then drop the queue."""
    op.execute(
        sa.text(
            "INSERT INTO scheduled_jobs (kind, key, due_at) "
            "SELECT :kind, CAST(person_id AS text), now() FROM contact_verdicts_due ON CONFLICT DO NOTHING"
        ).bindparams(kind=_KIND)
    )
    op.drop_table("contact_verdicts_due")


def downgrade() -> None:
    """Bring the queue back with the persons whose republish is still to run."""
    op.create_table("contact_verdicts_due", sa.Column("person_id", sa.Uuid, primary_key=True))
    op.execute(
        sa.text(
            "INSERT INTO contact_verdicts_due (person_id) "
            "SELECT CAST(key AS uuid) FROM scheduled_jobs WHERE kind = :kind"
        ).bindparams(kind=_KIND)
    )
    op.execute(sa.text("DELETE FROM scheduled_jobs WHERE kind = :kind").bindparams(kind=_KIND))
