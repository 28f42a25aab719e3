"""Store-channel messages waiting for their person at a till (terminal_messages), delivered over
ConnectTerminal and acknowledged by the till.

Revision ID: 0010
Revises: 0009
Create Date: 2027-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OPEN = "acked_at IS NULL AND expired_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "terminal_messages",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False),
        sa.Column("store_id", sa.Text, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_store_id", sa.Text, nullable=True),
        sa.Column("delivered_terminal_id", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "terminal_messages_waiting", "terminal_messages", ["person_id"], postgresql_where=sa.text(_OPEN)
    )
    op.create_index(
        "terminal_messages_delivered",
        "terminal_messages",
        ["delivered_store_id", "delivered_terminal_id"],
        postgresql_where=sa.text(_OPEN),
    )
    op.create_index(
        "terminal_messages_expiry", "terminal_messages", ["expires_at"], postgresql_where=sa.text(_OPEN)
    )
    op.create_index(
        "terminal_messages_acked",
        "terminal_messages",
        ["delivered_store_id", "delivered_terminal_id", "acked_at"],
    )


def downgrade() -> None:
    op.drop_table("terminal_messages")
