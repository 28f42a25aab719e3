"""Offers become full resources: a group, a validity window, a version raised by every update and by
archiving, and the history of their versions (offer_versions, one row per version as it was made), so what an
offer said when a decision chose it can still be read.

Revision ID: 0007
Revises: 0006
Create Date: 2027-03-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("offers", sa.Column("group", sa.Text, nullable=False, server_default=""))
    op.add_column("offers", sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True))
    op.add_column("offers", sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("offers", sa.Column("version", sa.BigInteger, nullable=False, server_default="1"))
    op.add_column("offers", sa.Column("update_time", sa.DateTime(timezone=True), nullable=True))
    op.add_column("offers", sa.Column("archive_time", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE offers SET update_time = create_time")
    op.alter_column("offers", "update_time", nullable=False)
    op.create_table(
        "offer_versions",
        sa.Column("offer_id", sa.Uuid, primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("offer", JSONB, nullable=False, comment="The offer as this version made it."),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO offer_versions (offer_id, version, offer, update_time) "
        "SELECT id, 1, jsonb_build_object('name', name, 'description', description, 'touchpoints', "
        "to_jsonb(touchpoints), 'segment_id', segment_id, 'priority', priority, 'group', '', "
        "'valid_from', NULL, 'valid_until', NULL, 'archive_time', NULL), create_time FROM offers"
    )


def downgrade() -> None:
    op.drop_table("offer_versions")
    for column in ("archive_time", "update_time", "version", "valid_until", "valid_from", "group"):
        op.drop_column("offers", column)
