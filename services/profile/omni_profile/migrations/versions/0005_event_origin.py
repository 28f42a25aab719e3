"""Events remember the person they were on before a merge moved them, so an unmerge can give back the
restored person's events whatever they carried (events tracked by person id, gateway outcomes).

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing. NULL (never moved by a merge) is what every
    # event stored before has; those a merge had already moved go back on an unmerge only by identifiers.
    op.add_column("events", sa.Column("origin_person_id", sa.Uuid, nullable=True))


def downgrade() -> None:
    op.drop_column("events", "origin_person_id")
