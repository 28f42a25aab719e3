"""Event occurrences remember the person their event named when that person had been merged into the one
the occurrence counts for, so an unmerge can give them back.

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-15
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing, and NULL (the event named the person it
    # counts for) is what every occurrence stored before had, except those a merge had already moved.
    op.add_column("event_occurrences", sa.Column("origin_person_id", sa.Uuid, nullable=True))


def downgrade() -> None:
    op.drop_column("event_occurrences", "origin_person_id")
