"""Operator calls keep their answers in omni_kit's idempotency store (idempotency_keys) instead of identity's
own operations table; the answers stored so far move there, under the operator scope.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA

from omni_kit.idempotency import create_idempotency_table, drop_idempotency_table

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fingerprint of an operator call was and is SHA-256(kind + request), with the kind (merge, unmerge,
# forget) as the method: the moved answers keep matching their replays.
_SCOPE = "operator"


def upgrade() -> None:
    """Create idempotency_keys, move the stored operator answers into it, drop operations."""
    create_idempotency_table(op)
    op.execute(
        sa.text(
            "INSERT INTO idempotency_keys (scope, request_id, fingerprint, response, person_ids, created_at)"
            " SELECT :scope, request_id, fingerprint, response, person_ids, created_at FROM operations"
        ).bindparams(scope=_SCOPE)
    )
    op.drop_table("operations")


def downgrade() -> None:
    """Bring operations back with the operator answers (kind lost: those answers are recorded as merges)."""
    op.create_table(
        "operations",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, comment="merge, unmerge or forget."),
        sa.Column("fingerprint", BYTEA, nullable=False, comment="SHA-256 of the request."),
        sa.Column("response", BYTEA, nullable=False, comment="The serialized response."),
        sa.Column(
            "person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            comment="The persons it concerned (answers are removed on erasure).",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        sa.text(
            "INSERT INTO operations (request_id, kind, fingerprint, response, person_ids, created_at)"
            " SELECT request_id, 'merge', fingerprint, response, coalesce(person_ids, '{}'), created_at"
            " FROM idempotency_keys WHERE scope = :scope AND response IS NOT NULL"
        ).bindparams(scope=_SCOPE)
    )
    drop_idempotency_table(op)
