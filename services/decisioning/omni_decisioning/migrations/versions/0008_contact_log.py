"""The contact log: marketing sends counted against the contact policy's caps (journeys' requests and the
gateway's sent messages, one row per request id), kept for 32 days.

Revision ID: 0008
Revises: 0007
Create Date: 2027-03-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contact_log",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.Column("contacted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False, comment="journey (requested here) or gateway (sent)"),
    )
    op.create_index("contact_log_person", "contact_log", ["person_id", "contacted_at"])


def downgrade() -> None:
    op.drop_table("contact_log")
