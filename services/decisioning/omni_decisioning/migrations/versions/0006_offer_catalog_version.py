"""A version of the offer catalogue, raised by every change to the offers in the changing transaction, so each
replica keeps the offers in memory and reloads them when the version it reads with a group of decisions has
moved (no message between replicas, nothing stale past the change's commit).

Revision ID: 0006
Revises: 0005
Create Date: 2027-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "offer_catalog",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="offer_catalog_one_row"),
    )
    op.execute("INSERT INTO offer_catalog (id, version) SELECT 1, count(*) FROM offers")


def downgrade() -> None:
    op.drop_table("offer_catalog")
