"""Events keep a fingerprint of their content as sent, so an id sent again with other content is told apart
from a duplicate (and refused) instead of being answered duplicate silently.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing. Events stored before have none and compare
    # equal to any resend of their key, which is how they were answered so far.
    op.add_column("events", sa.Column("fingerprint", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("events", "fingerprint")
