"""omni_kit's audit log: audit_events, append-only (who did what, when, to which ids, with what outcome).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from omni_kit.audit import create_audit_table, drop_audit_table

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create audit_events and the trigger refusing to change or delete its rows."""
    create_audit_table(op)


def downgrade() -> None:
    """Drop audit_events."""
    drop_audit_table(op)
