"""A message's purpose (marketing or transactional), which decides the consent its delivery needs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PURPOSES = "('marketing', 'transactional')"


def upgrade() -> None:
    # Every message stored before had no purpose and was marketing, as a consent without one is.
    op.add_column("messages", sa.Column("purpose", sa.String(32), nullable=False, server_default="marketing"))
    op.create_check_constraint("messages_purpose", "messages", f"purpose IN {PURPOSES}")


def downgrade() -> None:
    op.drop_constraint("messages_purpose", "messages", type_="check")
    op.drop_column("messages", "purpose")
