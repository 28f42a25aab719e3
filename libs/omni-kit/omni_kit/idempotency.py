"""Idempotent mutating calls (AIP-155), the way Stripe's API keeps them: the first answer to a request id is
stored with the change it made, in the same transaction, and replayed to every retry; the same request id
with other content is refused, not answered with the first result.

One table per service database (`idempotency_keys`, created by the service's migration through
`create_idempotency_table`) and one call around the work of a mutating RPC:

    async with sessions.begin() as session:
        return await idempotent(
            session, "CreateSegment", request.request_id, request, CreateSegmentResponse, lambda: create(session)
        )

Request ids are keyed per method unless the caller names a wider scope (identity's operator calls share one:
a merge's request id cannot be reused for an erasure). An answer that shows a person's data names the
person, so erasing the person removes it (`forget_answers`).

Concurrent retries of one request id do not both do the work: the first claims the key with a row the others
wait on (its primary key), and they replay its answer once it commits, or do the work themselves if it
rolled back.

Answers are kept for RETENTION, longer than any client retries: a service's main has its job worker purge
older ones (`keep_answers_purged(runtime)`). A service whose own rows are the record of what a request id did (the
gateway's messages, the matcher's decisions) keeps them there, and refuses a reused id the same way
(`ensure_same_request`): ALREADY_EXISTS, reason IDEMPOTENCY_KEY_REUSED, the request id in the metadata.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit import audit
from omni_kit.errors import AlreadyExists, Violations, has_control_characters
from omni_kit.scheduler import Backoff, Job, schedule

if TYPE_CHECKING:
    from omni_kit.runtime import Runtime

MAX_REQUEST_ID_LENGTH = 128
"""The longest request id a mutating call accepts (a UUID is 36 characters)."""

KEY_REUSED_REASON = "IDEMPOTENCY_KEY_REUSED"
"""ErrorInfo reason of a request id sent again with other content."""

RETENTION = timedelta(days=7)
"""How long an answer is kept for replay: longer than any client's retry schedule."""

PURGE_JOB = "omni.idempotency_purge"
"""The kind of the recurring job that forgets answers older than RETENTION (one job per database)."""
PURGE_INTERVAL = timedelta(hours=1)
"""How often the purge runs when it has caught up."""
PURGE_BATCH = 10_000
"""The most answers one run deletes; a full batch runs again at once."""
_PURGE_KEY = "idempotency_keys"

idempotency_metadata = sa.MetaData()

_SCOPE_COMMENT = "Where request ids are unique: the RPC by default."
_FINGERPRINT_COMMENT = "SHA-256 of the method and the request."
_RESPONSE_COMMENT = "The serialised answer; NULL while claimed."
_PERSONS_COMMENT = "The persons the answer shows."

idempotency_table = sa.Table(
    "idempotency_keys",
    idempotency_metadata,
    sa.Column("scope", sa.Text, primary_key=True, comment=_SCOPE_COMMENT),
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("fingerprint", BYTEA, nullable=False, comment=_FINGERPRINT_COMMENT),
    sa.Column("response", BYTEA, nullable=True, comment=_RESPONSE_COMMENT),
    sa.Column("person_ids", ARRAY(sa.Uuid), nullable=True, comment=_PERSONS_COMMENT),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
sa.Index("idempotency_keys_created_at", idempotency_table.c.created_at)
sa.Index("idempotency_keys_person_ids", idempotency_table.c.person_ids, postgresql_using="gin")

Response = TypeVar("Response", bound=Message)


def create_idempotency_table(op: Any) -> None:
    """Create the idempotency table in a service's migration (op is alembic.op)."""
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.Text, primary_key=True, comment=_SCOPE_COMMENT),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", BYTEA, nullable=False, comment=_FINGERPRINT_COMMENT),
        sa.Column("response", BYTEA, nullable=True, comment=_RESPONSE_COMMENT),
        sa.Column("person_ids", ARRAY(sa.Uuid), nullable=True, comment=_PERSONS_COMMENT),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_index("idempotency_keys_person_ids", "idempotency_keys", ["person_ids"], postgresql_using="gin")


def drop_idempotency_table(op: Any) -> None:
    """Undo create_idempotency_table."""
    op.drop_index("idempotency_keys_person_ids", table_name="idempotency_keys")
    op.drop_index("idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")


def check_request_id(value: str, violations: Violations, *, field: str = "request_id") -> str:
    """The request id of a mutating call, stripped of white space (as `idempotent` keys it); "" when the caller
    sent none (the call is then not idempotent, as AIP-155 allows). Bad ids are added to violations: longer
    than MAX_REQUEST_ID_LENGTH, or holding a control character anywhere (also one str.strip() would take for
    white space, such as a line break or U+001F), as a proto's `plain` rule refuses them."""
    request_id = value.strip()
    violations.check(
        len(request_id) <= MAX_REQUEST_ID_LENGTH, field, f"must be at most {MAX_REQUEST_ID_LENGTH} characters"
    )
    violations.check(not has_control_characters(value), field, "holds control characters")
    return request_id


def key_reused(request_id: str, *, used_for: str = "another request", **metadata: str) -> AlreadyExists:
    """The refusal of a request id sent again with other content: ALREADY_EXISTS, reason
    IDEMPOTENCY_KEY_REUSED, with the request id (and whatever else names its first use) in the metadata."""
    return AlreadyExists(
        message=f"request_id {request_id!r} was used for {used_for}; use a new request_id for a new request",
        reason=KEY_REUSED_REASON,
        metadata={"request_id": request_id, **metadata},
    )


def ensure_same_request(
    request_id: str,
    stored: bytes | str,
    digest: bytes | str,
    *,
    used_for: str = "another request",
    **metadata: str,
) -> None:
    """Refuse (key_reused) a request whose fingerprint differs from the one stored with its request id's
    first use. For services whose own rows keep what a request id did; `idempotent` does it for the rest."""
    if stored != digest:
        raise key_reused(request_id, used_for=used_for, **metadata)


def fingerprint(method: str, request: Message) -> bytes:
    """What a call asks for: a hash of the method and the request's deterministic encoding (its request id
    included, which is the same for every call compared)."""
    return hashlib.sha256(method.encode() + request.SerializeToString(deterministic=True)).digest()


async def idempotent(
    session: AsyncSession,
    method: str,
    request_id: str,
    request: Message,
    response_type: type[Response],
    work: Callable[[], Awaitable[Response]],
    *,
    scope: str | None = None,
    persons: Callable[[Response], Iterable[uuid.UUID]] | None = None,
) -> Response:
    """The answer to a mutating call: replayed when request_id was answered before with the same content,
    refused (ALREADY_EXISTS, IDEMPOTENCY_KEY_REUSED) when it was used for other content, else work's answer,
    stored in the session's transaction so it commits or rolls back with work's change.

    scope is where request ids are unique (the method by default); persons names the persons an answer
    shows, so that erasing one of them removes it. The request id is keyed stripped of white space (the
    caller checked it: check_request_id, or a proto's rules); without one the work is simply done. The
    caller commits.
    """
    request_id = request_id.strip()
    if not request_id:
        answer = await work()
        audit.note(answer)
        return answer
    key_scope = scope or method
    digest = fingerprint(method, _keyed(request, request_id))
    where = (idempotency_table.c.scope == key_scope, idempotency_table.c.request_id == request_id)
    claimed = await session.execute(
        insert(idempotency_table)
        .values(scope=key_scope, request_id=request_id, fingerprint=digest)
        .on_conflict_do_nothing()
        .returning(idempotency_table.c.request_id)
    )
    if claimed.first() is None:
        # Answered before, or being answered: the insert waited for that transaction to commit.
        row = (
            await session.execute(
                sa.select(idempotency_table.c.fingerprint, idempotency_table.c.response).where(*where)
            )
        ).one()
        ensure_same_request(request_id, row.fingerprint, digest)
        if row.response is not None:
            replayed = response_type.FromString(row.response)
            audit.note(replayed)
            return replayed
    answer = await work()
    # The audit entry written with this change names what the answer shows (a created resource's id).
    audit.note(answer)
    shown = sorted(set(persons(answer))) if persons is not None else None
    await session.execute(
        idempotency_table.update().where(*where).values(response=answer.SerializeToString(), person_ids=shown)
    )
    return answer


def _keyed(request: Message, request_id: str) -> Message:
    """The request as its key names it: its request_id field (if it has one) stripped like the key, so that
    " k-1" and "k-1" are one request, as they are one key."""
    field = request.DESCRIPTOR.fields_by_name.get("request_id")
    if field is None or getattr(request, field.name) == request_id:
        return request
    keyed = type(request)()
    keyed.CopyFrom(request)
    setattr(keyed, field.name, request_id)
    return keyed


async def forget_answers(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> None:
    """Remove the stored answers that show any of these persons (their erasure)."""
    ids = list(person_ids)
    if ids:
        await session.execute(
            idempotency_table.delete().where(
                idempotency_table.c.person_ids.overlap(sa.cast(ids, ARRAY(sa.Uuid)))
            )
        )


async def purge_answers(session: AsyncSession, *, before: datetime, limit: int = 10_000) -> int:
    """Forget at most limit answers stored before the given time; returns how many. Run periodically, with
    `before` = now - RETENTION."""
    oldest = (
        sa.select(idempotency_table.c.scope, idempotency_table.c.request_id)
        .where(idempotency_table.c.created_at < before)
        .order_by(idempotency_table.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("oldest")
    )
    result = await session.execute(
        idempotency_table.delete().where(
            sa.tuple_(idempotency_table.c.scope, idempotency_table.c.request_id).in_(
                sa.select(oldest.c.scope, oldest.c.request_id)
            )
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def keep_answers_purged(runtime: Runtime, *, every: timedelta = PURGE_INTERVAL) -> None:
    """Have a service's job worker forget the answers older than RETENTION, a batch per run, again every
    `every` once it has caught up, and schedule the first run (each replica asks, one job results; while the
    database cannot be reached at start, it is asked again). A service's main calls it before serving."""
    # Purging is maintenance: it is never given up, however often it fails.
    runtime.add_job_kind(
        PURGE_JOB,
        _AnswerPurge(every),
        batch_size=1,
        lease=timedelta(minutes=5),
        max_attempts=1_000_000,
        backoff=Backoff(first_s=10, max_s=max(every.total_seconds(), 10)),
    )

    async def schedule_first() -> None:
        async with runtime.transaction() as session:
            await schedule(session, PURGE_JOB, _PURGE_KEY)

    await runtime.when_database_answers(schedule_first)


class _AnswerPurge:
    """The purge job's handler: one batch, then the next run (at once while there is more)."""

    def __init__(self, every: timedelta) -> None:
        self._every = every

    async def __call__(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        count = await purge_answers(session, before=datetime.now(UTC) - RETENTION, limit=PURGE_BATCH)
        next_in = timedelta(0) if count >= PURGE_BATCH else self._every
        await schedule(session, PURGE_JOB, _PURGE_KEY, next_in, replace=True)
