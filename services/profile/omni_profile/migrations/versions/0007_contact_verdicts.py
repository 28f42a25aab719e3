"""Contact verdicts: the sequence their announcements are versioned by, and the queue of persons whose
verdicts are to be republished, filled with every person who has consent answers, so that decisioning and
the gateway (which keep verdicts from this upgrade on) learn theirs. Profile drains the queue at start.

Revision ID: 0007
Revises: 0006
Create Date: 2027-02-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE contact_verdict_versions AS bigint")
    op.create_table("contact_verdicts_due", sa.Column("person_id", sa.Uuid, primary_key=True))
    # Persons without answers need no announcement: their verdicts are those of no answer.
    op.execute("INSERT INTO contact_verdicts_due (person_id) SELECT DISTINCT person_id FROM consents")


def downgrade() -> None:
    op.drop_table("contact_verdicts_due")
    op.execute("DROP SEQUENCE contact_verdict_versions")
