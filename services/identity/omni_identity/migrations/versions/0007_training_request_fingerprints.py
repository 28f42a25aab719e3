"""A trained model version keeps what its training call asked for (omni_kit.idempotency's hash of the
TrainMatchModelRequest), so that the same request id with other content is refused rather than answered
with that version. Versions trained before keep NULL and answer any call with their request id, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2027-02-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "match_models",
        sa.Column(
            "request_fingerprint",
            sa.LargeBinary,
            nullable=True,
            comment="omni_kit.idempotency's hash of the training request; NULL for versions trained before.",
        ),
    )


def downgrade() -> None:
    op.drop_column("match_models", "request_fingerprint")
