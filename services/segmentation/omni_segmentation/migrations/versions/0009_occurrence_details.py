"""Event occurrences keep their channel and the properties segment rules name (filters on event counts,
sums of a property): nothing else of an event's properties is kept.

Revision ID: 0009
Revises: 0008
Create Date: 2027-03-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "event_occurrences", sa.Column("channel", sa.SmallInteger, nullable=False, server_default="0")
    )
    op.add_column("event_occurrences", sa.Column("properties", JSONB))


def downgrade() -> None:
    op.drop_column("event_occurrences", "properties")
    op.drop_column("event_occurrences", "channel")
