"""Idempotency through omni_kit: CreateTemplate's answers in idempotency_keys, and a message's fingerprint
computed as omni_kit.idempotency computes every request's (wire.send_fingerprint: SHA-256 of the method and
the SendMessageRequest asking for the message), stored as bytes.

The fingerprints stored so far are computed again from what each row holds, so a replay of a message sent
before keeps matching it. A redacted row (its person forgotten) no longer holds its variables: a replay of
one that had variables is now refused as a reused key instead of answered with the redacted message; neither
sends anything.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-08
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

from omni_gateway.domain import Channel, Purpose, SendRequest
from omni_gateway.wire import send_fingerprint
from omni_kit.idempotency import create_idempotency_table, drop_idempotency_table

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 1000
_ROWS = sa.text(
    "SELECT id, request_id, person_id, channel, template_id, variables, purpose FROM messages "
    "WHERE id > :after ORDER BY id LIMIT :limit"
).columns(variables=JSONB)
_SET = sa.text("UPDATE messages SET fingerprint = :fingerprint WHERE id = :id")


def upgrade() -> None:
    create_idempotency_table(op)
    op.alter_column(
        "messages", "fingerprint", type_=BYTEA, postgresql_using="convert_to(fingerprint, 'UTF8')"
    )
    _refingerprint(lambda row: send_fingerprint(_request(row)))


def downgrade() -> None:
    op.alter_column("messages", "fingerprint", type_=sa.Text, postgresql_using="encode(fingerprint, 'hex')")
    _refingerprint(_legacy_fingerprint)
    drop_idempotency_table(op)


def _request(row: Any) -> SendRequest:
    return SendRequest(
        request_id=row.request_id,
        person_id=row.person_id,
        channel=Channel(row.channel),
        template_id=row.template_id,
        variables=row.variables or {},
        purpose=Purpose(row.purpose),
    )


def _legacy_fingerprint(row: Any) -> str:
    """The fingerprint before this revision: SHA-256 (hex) of the content as canonical JSON, the purpose only
    when it was not marketing."""
    content: dict[str, object] = {
        "person_id": str(row.person_id),
        "channel": row.channel,
        "template_id": row.template_id,
        "variables": row.variables or {},
    }
    if row.purpose != Purpose.MARKETING.value:
        content["purpose"] = row.purpose
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _refingerprint(compute: Callable[[Any], object]) -> None:
    connection = op.get_bind()
    for rows in _batches(connection):
        connection.execute(_SET, [{"id": row.id, "fingerprint": compute(row)} for row in rows])


def _batches(connection: sa.Connection) -> Iterator[list[Any]]:
    after = uuid.UUID(int=0)
    while rows := list(connection.execute(_ROWS, {"after": after, "limit": _BATCH})):
        yield rows
        after = rows[-1].id
