"""Providers, receipts and suppression: which provider took a message (its id and details there), the attempt
handed to a provider and not finished yet, the DELIVERED and BOUNCED statuses, the receipts providers report
(deduplicated by their event id) and the suppression list.

Revision ID: 0007
Revises: 0006
Create Date: 2027-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_OLD_STATUSES = "('queued', 'sent', 'failed')"
_STATUSES = "('queued', 'sent', 'failed', 'delivered', 'bounced')"
_RECEIPT_KINDS = "('delivered', 'failed', 'bounced', 'opened', 'clicked', 'complained', 'unsubscribed')"
_REASONS = "('hard_bounce', 'address_invalid', 'complaint', 'unsubscribed', 'erased')"


def upgrade() -> None:
    op.add_column("messages", sa.Column("provider", sa.Text, nullable=False, server_default=""))
    op.add_column("messages", sa.Column("provider_message_id", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "messages",
        sa.Column("provider_details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column("messages", sa.Column("attempt_provider", sa.Text, nullable=False, server_default=""))
    op.add_column("messages", sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint("messages_status", "messages", type_="check")
    op.create_check_constraint("messages_status", "messages", f"status IN {_STATUSES}")
    # Receipts name their message by the provider's id for it.
    op.create_index(
        "messages_provider_message",
        "messages",
        ["provider", "provider_message_id"],
        postgresql_where=sa.text("provider_message_id <> ''"),
    )
    op.create_table(
        "receipts",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("provider_event_id", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Uuid, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("machine", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.CheckConstraint(f"kind IN {_RECEIPT_KINDS}", name="receipts_kind"),
    )
    op.create_index("receipts_message", "receipts", ["message_id"])
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(32), primary_key=True),
        # SHA-256 of the normalised address: the list holds no personal data, and survives an erasure.
        sa.Column("address_hash", sa.LargeBinary, primary_key=True),
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("provider", sa.Text, nullable=False, server_default=""),
        sa.Column("message_id", sa.Uuid, nullable=True),
        sa.CheckConstraint(f"reason IN {_REASONS}", name="suppressions_reason"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_index("receipts_message", table_name="receipts")
    op.drop_table("receipts")
    op.drop_index("messages_provider_message", table_name="messages")
    op.execute("UPDATE messages SET status = 'sent' WHERE status IN ('delivered', 'bounced')")
    op.drop_constraint("messages_status", "messages", type_="check")
    op.create_check_constraint("messages_status", "messages", f"status IN {_OLD_STATUSES}")
    for column in (
        "clicked_at",
        "opened_at",
        "delivered_at",
        "attempt_started_at",
        "attempt_provider",
        "provider_details",
        "provider_message_id",
        "provider",
    ):
        op.drop_column("messages", column)
