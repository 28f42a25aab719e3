"""The outbox and inbox tables every service's database holds, and the migration step that creates them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

bus_metadata = sa.MetaData()

_ID_COMMENT = "The event id (UUIDv7), also its JetStream message id."
_PAYLOAD_COMMENT = "The serialised omni.events.v1.Envelope."

outbox_table = sa.Table(
    "outbox",
    bus_metadata,
    sa.Column("id", sa.Uuid, primary_key=True, comment=_ID_COMMENT),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("person_id", sa.Text, nullable=True),
    sa.Column("payload", sa.LargeBinary, nullable=False, comment=_PAYLOAD_COMMENT),
    sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
)
sa.Index("outbox_unpublished", outbox_table.c.id, postgresql_where=outbox_table.c.published_at.is_(None))

inbox_table = sa.Table(
    "inbox",
    bus_metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Uuid, primary_key=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


def create_bus_tables(op: Any) -> None:
    """Create outbox and inbox in a service's first migration (op is alembic.op)."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid, primary_key=True, comment=_ID_COMMENT),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("person_id", sa.Text, nullable=True),
        sa.Column("payload", sa.LargeBinary, nullable=False, comment=_PAYLOAD_COMMENT),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL"))
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def drop_bus_tables(op: Any) -> None:
    """Undo create_bus_tables."""
    op.drop_table("inbox")
    op.drop_index("outbox_unpublished", table_name="outbox")
    op.drop_table("outbox")
