"""The answers of CreateJourney and CreateOffer, kept by omni_kit.idempotency for replay by request id
(idempotency_keys); a recurring job forgets them after omni_kit.idempotency.RETENTION.

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-08
"""

from __future__ import annotations

from alembic import op

from omni_kit.idempotency import create_idempotency_table, drop_idempotency_table

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_idempotency_table(op)


def downgrade() -> None:
    drop_idempotency_table(op)
