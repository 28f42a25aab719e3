"""Identity's lineage kept by omni_kit.lineage (person_lineage): where merged ids lead, so an erasure reaches
the ids merged into the person and no id an unmerge gave back, and tombstones, so a send asked for a
forgotten person is never made.

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01
"""

from __future__ import annotations

from alembic import op

from omni_kit.lineage import create_lineage_table, drop_lineage_table

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Erasures applied before left no tombstone: their messages are redacted already, and the persons are
    # unknown to identity, so a send for one of them fails ("person not found").
    create_lineage_table(op)


def downgrade() -> None:
    drop_lineage_table(op)
