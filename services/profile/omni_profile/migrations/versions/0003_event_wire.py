"""Events keep their protobuf encoding, so reads show them without rebuilding them from columns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: events recorded before keep being shown from their columns.
    op.add_column("events", sa.Column("wire", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("events", "wire")
