"""The outbox, inbox and outbox dead-letter tables every service's database holds, and the migration steps
that create them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

bus_metadata = sa.MetaData()

_ID_COMMENT = "The event id (UUIDv7), also its JetStream message id."
_PAYLOAD_COMMENT = "The serialised omni.events.v1.Envelope."

# What the relay could not publish (too large for the server, or refused by JetStream for good), kept with
# the reason for an operator: once the cause is fixed, a row can be staged again by inserting it back into
# the outbox (id, subject, type, person_id, payload, headers).
_DEAD_LETTER_COLUMNS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("id", (sa.Uuid,), {"primary_key": True, "comment": "The event id, or the first of a batch's part."}),
    ("subject", (sa.Text,), {"nullable": False}),
    ("type", (sa.Text,), {"nullable": False}),
    ("person_id", (sa.Text,), {"nullable": True}),
    ("payload", (sa.LargeBinary,), {"nullable": False, "comment": "The envelope, or an EnvelopeBatch."}),
    ("headers", (JSONB,), {"nullable": False, "server_default": sa.text("'{}'::jsonb")}),
    ("error", (sa.Text,), {"nullable": False, "comment": "Why it could not be published."}),
    ("created_at", (sa.DateTime(timezone=True),), {"nullable": False}),
    (
        "dead_lettered_at",
        (sa.DateTime(timezone=True),),
        {"nullable": False, "server_default": sa.func.now()},
    ),
]

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


outbox_dead_letters_table = sa.Table(
    "outbox_dead_letters",
    bus_metadata,
    *[sa.Column(name, *args, **kwargs) for name, args, kwargs in _DEAD_LETTER_COLUMNS],
)


def create_outbox_dead_letters(op: Any) -> None:
    """Create outbox_dead_letters in a service's migration (op is alembic.op)."""
    op.create_table(
        "outbox_dead_letters",
        *[sa.Column(name, *args, **kwargs) for name, args, kwargs in _DEAD_LETTER_COLUMNS],
    )


def drop_outbox_dead_letters(op: Any) -> None:
    """Undo create_outbox_dead_letters."""
    op.drop_table("outbox_dead_letters")
