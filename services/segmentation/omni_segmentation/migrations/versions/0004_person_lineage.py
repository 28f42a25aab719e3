"""Identity's lineage kept by omni_kit.lineage: the merge aliases of merged_persons move to person_lineage,
which also holds tombstones of forgotten persons.

Revision ID: 0004
Revises: 0003
Create Date: 2027-02-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from omni_kit.lineage import aliases_from_lineage, lineage_from_aliases

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Erasures applied before left no tombstone: their persons are gone from here, and profile refuses
    # events naming them, so none should come.
    lineage_from_aliases(
        op,
        table="merged_persons",
        person_column="person_id",
        survivor_column="survivor_id",
        time_column="merged_at",
    )


def downgrade() -> None:
    op.create_table(
        "merged_persons",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("survivor_id", sa.Uuid, nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("merged_persons_survivor", "merged_persons", ["survivor_id"])
    aliases_from_lineage(
        op,
        table="merged_persons",
        person_column="person_id",
        survivor_column="survivor_id",
        time_column="merged_at",
    )
