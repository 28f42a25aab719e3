"""The webhook channel (omni.common.v1.CHANNEL_WEBHOOK): templates and messages may be for it.

Undoing it fails while a template or message is for the webhook channel (the old checks refuse them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHANNELS = "('web', 'app', 'email', 'sms', 'push', 'store', 'call_center', 'webhook')"
CHANNELS_BEFORE = "('web', 'app', 'email', 'sms', 'push', 'store', 'call_center')"
_CHECKS = (("templates_channel", "templates"), ("messages_channel", "messages"))


def _replace_checks(channels: str) -> None:
    for name, table in _CHECKS:
        op.drop_constraint(name, table, type_="check")
        op.create_check_constraint(name, table, f"channel IN {channels}")


def upgrade() -> None:
    _replace_checks(CHANNELS)


def downgrade() -> None:
    _replace_checks(CHANNELS_BEFORE)
