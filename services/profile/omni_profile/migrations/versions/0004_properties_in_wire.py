"""An event's properties are kept once: in its encoding, not also as JSON beside it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for events whose encoding (wire) holds them; events recorded before keep their JSON.
    op.alter_column("events", "properties", nullable=True)


def downgrade() -> None:
    op.execute(
        "UPDATE events SET properties = '{}'::jsonb WHERE properties IS NULL"
    )  # the encoding still holds them; a downgraded reader shows none
    op.alter_column("events", "properties", nullable=False)
