"""Profile's contact verdicts (omni_kit.contact's copy, fed by profile.contact_verdict_changed), for rules on
consent per channel and purpose ("opted in to push").

Revision ID: 0008
Revises: 0007
Create Date: 2027-03-03
"""

from collections.abc import Sequence

from alembic import op

from omni_kit import contact

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    contact.create_table(op)


def downgrade() -> None:
    contact.drop_table(op)
