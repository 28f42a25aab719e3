"""Idempotent mutating calls (AIP-155), the way Stripe's API keeps them: the first answer to a request id is
stored with the change it made, in the same transaction, and replayed to every retry; the same request id
with other content is refused, not answered with the first result.

One table per service database (`idempotency_keys`, created by the service's migration through
`create_idempotency_table`) and one call around the work of a mutating RPC:

    async with sessions.begin() as session:
        return await idempotent(
            session, "CreateSegment", request.request_id, request, CreateSegmentResponse, lambda: create(session)
        )

Concurrent retries of one request id do not both do the work: the first claims the key with a row the others
wait on (its primary key), and they replay its answer once it commits, or do the work themselves if it
rolled back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.errors import AlreadyExists, Violations, has_control_characters

MAX_REQUEST_ID_LENGTH = 128
"""The longest request id a mutating call accepts (a UUID is 36 characters)."""

KEY_REUSED_REASON = "IDEMPOTENCY_KEY_REUSED"
"""ErrorInfo reason of a request id sent again with other content."""

RETENTION = timedelta(days=7)
"""How long an answer is kept for replay: longer than any client's retry schedule."""

idempotency_metadata = sa.MetaData()

idempotency_table = sa.Table(
    "idempotency_keys",
    idempotency_metadata,
    sa.Column(
        "method", sa.Text, primary_key=True, comment="The RPC's name, so ids of different calls never meet."
    ),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column(
        "fingerprint", sa.Text, nullable=False, comment="SHA-256 of the request without its request id."
    ),
    sa.Column(
        "response", sa.LargeBinary, nullable=True, comment="The serialised answer; NULL while claimed."
    ),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
sa.Index("idempotency_keys_created_at", idempotency_table.c.created_at)

Response = TypeVar("Response", bound=Message)


def create_idempotency_table(op: Any) -> None:
    """Create the idempotency table in a service's migration (op is alembic.op)."""
    op.create_table(
        "idempotency_keys",
        sa.Column("method", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def drop_idempotency_table(op: Any) -> None:
    """Undo create_idempotency_table."""
    op.drop_index("idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")


def check_request_id(value: str, violations: Violations, *, field: str = "request_id") -> str:
    """The request id of a mutating call, stripped; "" when the caller sent none (the call is then not
    idempotent, as AIP-155 allows). Bad ids are added to violations."""
    request_id = value.strip()
    violations.check(
        len(request_id) <= MAX_REQUEST_ID_LENGTH, field, f"must be at most {MAX_REQUEST_ID_LENGTH} characters"
    )
    violations.check(not has_control_characters(request_id), field, "holds control characters")
    return request_id


def fingerprint(request: Message, *, key_field: str = "request_id") -> str:
    """What a request asks for, whatever its request id: a hash of its deterministic encoding without it.

    Unknown fields are dropped first, so a newer client's extra fields do not make a retry look different.
    """
    content = type(request)()
    content.CopyFrom(request)
    content.DiscardUnknownFields()
    if key_field in content.DESCRIPTOR.fields_by_name:
        content.ClearField(key_field)
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()


async def idempotent(
    session: AsyncSession,
    method: str,
    request_id: str,
    request: Message,
    response_type: type[Response],
    work: Callable[[], Awaitable[Response]],
) -> Response:
    """The answer to a mutating call: replayed when request_id was answered before with the same content,
    refused (ALREADY_EXISTS, IDEMPOTENCY_KEY_REUSED) when it was used for other content, else work's answer,
    stored in the session's transaction so it commits or rolls back with work's change.

    Without a request id the work is simply done. The caller commits.
    """
    if not request_id:
        return await work()
    digest = fingerprint(request)
    claimed = await session.execute(
        insert(idempotency_table)
        .values(method=method, request_id=request_id, fingerprint=digest)
        .on_conflict_do_nothing()
        .returning(idempotency_table.c.request_id)
    )
    if claimed.first() is None:
        # Someone answered (or is answering: the insert waited for its commit) this request id before.
        row = (
            await session.execute(
                sa.select(idempotency_table.c.fingerprint, idempotency_table.c.response).where(
                    idempotency_table.c.method == method, idempotency_table.c.request_id == request_id
                )
            )
        ).one()
        if row.fingerprint != digest:
            raise AlreadyExists(
                message=(
                    f"request_id {request_id!r} was used for a {method} with other content; "
                    "use a new request_id for a new request"
                ),
                reason=KEY_REUSED_REASON,
                metadata={"request_id": request_id, "method": method},
            )
        if row.response is not None:
            return response_type.FromString(row.response)
    answer = await work()
    await session.execute(
        idempotency_table.update()
        .where(idempotency_table.c.method == method, idempotency_table.c.request_id == request_id)
        .values(response=answer.SerializeToString())
    )
    return answer


async def purge_answers(session: AsyncSession, *, before: datetime, limit: int = 10_000) -> int:
    """Forget at most limit answers stored before the given time; returns how many. Run periodically, with
    `before` = now - RETENTION."""
    oldest = (
        sa.select(idempotency_table.c.method, idempotency_table.c.request_id)
        .where(idempotency_table.c.created_at < before)
        .order_by(idempotency_table.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("oldest")
    )
    result = await session.execute(
        idempotency_table.delete().where(
            sa.tuple_(idempotency_table.c.method, idempotency_table.c.request_id).in_(
                sa.select(oldest.c.method, oldest.c.request_id)
            )
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
