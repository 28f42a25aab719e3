"""The answers of CreateComputedTrait, SetTraits and SetConsent, kept by omni_kit.idempotency for replay by
request id (idempotency_keys); a recurring job forgets them after omni_kit.idempotency.RETENTION, and an
erasure those that show the person.

Revision ID: 0010
Revises: 0009
Create Date: 2027-02-08
"""

from __future__ import annotations

from alembic import op

from omni_kit.idempotency import create_idempotency_table, drop_idempotency_table

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_idempotency_table(op)


def downgrade() -> None:
    drop_idempotency_table(op)
