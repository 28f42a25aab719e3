"""Merges keep the reference of the request that caused them (a resolve's reference, an operator's request id).

Revision ID: 0004
Revises: 0101
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0101"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add merges.reference; merges recorded before it have none."""
    op.add_column(
        "merges",
        sa.Column(
            "reference",
            sa.Text,
            nullable=False,
            server_default="",
            comment="The resolve request's reference (e.g. the event that carried the identifiers) or the "
            "operator call's request id.",
        ),
    )


def downgrade() -> None:
    """Drop merges.reference."""
    op.drop_column("merges", "reference")
