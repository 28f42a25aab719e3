"""Cluster repair: a match decision keeps the persons it proposed to merge (a record matching two or more
persons that match each other above the link threshold: one person split in two). Decisions made before
keep an empty list.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "match_decisions",
        sa.Column(
            "proposed_merge_person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            server_default="{}",
            comment="Cluster repair: persons the record matched that match each other, proposed for a merge.",
        ),
    )


def downgrade() -> None:
    op.drop_column("match_decisions", "proposed_merge_person_ids")
