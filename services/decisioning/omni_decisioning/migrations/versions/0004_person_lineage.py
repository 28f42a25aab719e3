"""Identity's lineage kept by omni_kit.lineage: the merge aliases move to person_lineage (which also holds
tombstones of forgotten persons), and journey runs a merge moved remember whose they were.

Revision ID: 0004
Revises: 0003
Create Date: 2027-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_kit.lineage import aliases_from_lineage, lineage_from_aliases

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    lineage_from_aliases(
        op, table="person_aliases", person_column="merged_person_id", survivor_column="survivor_person_id"
    )
    # Nullable without a default: adding it rewrites nothing. Runs a merge moved before it stay with the
    # survivor on an unmerge: whose they were was not kept.
    op.add_column("journey_runs", sa.Column("origin_person_id", sa.Uuid, nullable=True))


def downgrade() -> None:
    op.drop_column("journey_runs", "origin_person_id")
    op.create_table(
        "person_aliases",
        sa.Column("merged_person_id", sa.Uuid, primary_key=True),
        sa.Column("survivor_person_id", sa.Uuid, nullable=False),
    )
    op.create_index("ix_person_aliases_survivor_person_id", "person_aliases", ["survivor_person_id"])
    aliases_from_lineage(
        op, table="person_aliases", person_column="merged_person_id", survivor_column="survivor_person_id"
    )
