"""Computed traits in the read model: profile announces them in profile.profile_changed ("computed_traits"),
and a trait condition sees them (a trait set on the profile wins over a computed one of the same name).
They change apart from traits and cart, so they keep their own time of change.

Revision ID: 0006
Revises: 0005
Create Date: 2027-03-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "persons",
        sa.Column("computed_traits", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column("persons", sa.Column("computed_changed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("persons", "computed_changed_at")
    op.drop_column("persons", "computed_traits")
