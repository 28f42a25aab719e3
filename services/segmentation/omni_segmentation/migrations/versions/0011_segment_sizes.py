"""Each segment's size over time: its member count per UTC day (the last count taken that day).

Revision ID: 0011
Revises: 0010
Create Date: 2027-03-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segment_sizes",
        sa.Column("segment_id", sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("member_count", sa.BigInteger, nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_sizes")
