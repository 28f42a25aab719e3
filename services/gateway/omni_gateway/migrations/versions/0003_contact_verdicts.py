"""The copy of profile's contact verdicts (omni_kit.contact), which decides whether a message may go, instead
of the consents read from profile at each attempt; and the verdict version a journey's send was decided by.

The table starts empty: the gateway held no consents. Profile republishes the verdicts of everyone who has
answered (its migration 0007), and the gateway's consumer of them reads the event log from its start, so
they arrive whichever service is upgraded first.

Revision ID: 0003
Revises: 0002
Create Date: 2027-02-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_kit import contact

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    contact.create_table(op)
    op.add_column(
        "messages", sa.Column("contact_verdict_version", sa.BigInteger, nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("messages", "contact_verdict_version")
    contact.drop_table(op)
