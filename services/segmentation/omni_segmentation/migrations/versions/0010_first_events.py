"""The first occurrence of each event type per person, beside the latest (first_event rules: "new
customer", "first seen within 14 days"). Rows from before take the earliest occurrence still kept (older
ones were purged), or stay empty (unknown: such a rule does not hold for them) when none is.

Revision ID: 0010
Revises: 0009
Create Date: 2027-03-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("person_last_events", sa.Column("first_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE person_last_events AS l SET first_at = o.first_at FROM (SELECT person_id, event_type, "
        "min(occurred_at) AS first_at FROM event_occurrences GROUP BY person_id, event_type) AS o "
        "WHERE l.person_id = o.person_id AND l.event_type = o.event_type"
    )


def downgrade() -> None:
    op.drop_column("person_last_events", "first_at")
