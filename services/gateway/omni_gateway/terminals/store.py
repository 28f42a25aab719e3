"""All SQL on terminal_messages: recording a store message, handing waiting messages to a till, the till's
acknowledgements, resuming a till, and expiry. Times are the database's (now()), so replicas agree."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["Acked", "Expired", "TerminalMessages", "Till", "WaitingMessage"]


@dataclass(frozen=True, slots=True)
class Till:
    """One till: a store and a terminal in it."""

    store_id: str
    terminal_id: str


@dataclass(frozen=True, slots=True)
class WaitingMessage:
    """A store message as a till is sent it."""

    message_id: uuid.UUID
    person_id: uuid.UUID
    text: str
    create_time: datetime
    expires_at: datetime
    resent: bool = False


@dataclass(frozen=True, slots=True)
class Acked:
    """A message a till acknowledged just now."""

    message_id: uuid.UUID
    acked_at: datetime


@dataclass(frozen=True, slots=True)
class Expired:
    """A message that expired before any till acknowledged it."""

    message_id: uuid.UUID
    expired_at: datetime


_COLUMNS = "m.message_id, m.person_id, m.text, m.create_time, m.expires_at"
_OPEN = "m.acked_at IS NULL AND m.expired_at IS NULL AND m.expires_at > now()"

_RECORD = sa.text(
    "INSERT INTO terminal_messages (message_id, person_id, store_id, text, create_time, expires_at) "
    "VALUES (:id, :person, :store, :text, now(), now() + make_interval(secs => :ttl)) "
    "ON CONFLICT (message_id) DO NOTHING"
)
# The person's open messages for this store that are not at this till already (each goes down a stream
# once; a reconnect sends the unacknowledged again, see _RESUME), oldest first. A message delivered to another
# till and not acknowledged there moves here: the person is here now. Ids merged into the person count (as
# an array: an OR with the subquery would scan the whole table).
_CLAIM = sa.text(
    f"UPDATE terminal_messages AS m SET delivered_store_id = :store, delivered_terminal_id = :terminal, "
    f"delivered_at = now(), delivery_count = m.delivery_count + 1 "
    f"FROM (SELECT message_id FROM terminal_messages AS m "
    f"WHERE m.person_id = ANY(ARRAY(SELECT CAST(:person AS uuid) UNION ALL "
    f"SELECT l.person_id FROM person_lineage AS l WHERE l.survivor_id = :person)) "
    f"AND {_OPEN} AND (m.store_id IS NULL OR m.store_id = :store) "
    f"AND (m.delivered_store_id IS DISTINCT FROM :store OR m.delivered_terminal_id IS DISTINCT FROM :terminal) "
    f"ORDER BY m.create_time, m.message_id LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    f"WHERE m.message_id = due.message_id RETURNING {_COLUMNS}"
)
_RESUME = sa.text(
    f"UPDATE terminal_messages AS m SET delivered_at = now(), delivery_count = m.delivery_count + 1 "
    f"FROM (SELECT message_id FROM terminal_messages AS m "
    f"WHERE m.delivered_store_id = :store AND m.delivered_terminal_id = :terminal AND {_OPEN} "
    f"ORDER BY m.create_time, m.message_id LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    f"WHERE m.message_id = due.message_id RETURNING {_COLUMNS}"
)
_ACK = sa.text(
    "UPDATE terminal_messages SET acked_at = now() "
    "WHERE message_id = ANY(CAST(:ids AS uuid[])) AND delivered_store_id = :store "
    "AND delivered_terminal_id = :terminal AND acked_at IS NULL AND expired_at IS NULL "
    "RETURNING message_id, acked_at"
)
_LAST_ACK = sa.text(
    "SELECT message_id, acked_at FROM terminal_messages "
    "WHERE delivered_store_id = :store AND delivered_terminal_id = :terminal AND acked_at IS NOT NULL "
    "ORDER BY acked_at DESC, message_id DESC LIMIT 1"
)
_RELEASE = sa.text(
    "UPDATE terminal_messages SET delivered_store_id = NULL, delivered_terminal_id = NULL "
    "WHERE delivered_store_id = :store AND delivered_terminal_id = :terminal "
    "AND acked_at IS NULL AND expired_at IS NULL"
)
_EXPIRE = sa.text(
    "UPDATE terminal_messages AS m SET expired_at = now() "
    "FROM (SELECT message_id FROM terminal_messages WHERE acked_at IS NULL AND expired_at IS NULL "
    "AND expires_at <= now() ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED) AS due "
    "WHERE m.message_id = due.message_id RETURNING m.message_id, m.expired_at"
)
_FORGET = sa.text("DELETE FROM terminal_messages WHERE person_id = ANY(CAST(:ids AS uuid[]))")


def _waiting(rows: Sequence[sa.Row[tuple[object, ...]]], *, resent: bool = False) -> list[WaitingMessage]:
    found = [
        WaitingMessage(r.message_id, r.person_id, r.text, r.create_time, r.expires_at, resent)  # type: ignore[attr-defined]
        for r in rows
    ]
    found.sort(key=lambda m: (m.create_time, m.message_id))
    return found


class TerminalMessages:
    """The statements on terminal_messages, each in the caller's transaction."""

    async def record(
        self,
        session: AsyncSession,
        message_id: uuid.UUID,
        person_id: uuid.UUID,
        store_id: str | None,
        text: str,
        ttl_s: float,
    ) -> bool:
        """Keep a message waiting for its person; False when it was recorded before (a retried send)."""
        result = await session.execute(
            _RECORD,
            {"id": message_id, "person": person_id, "store": store_id, "text": text, "ttl": ttl_s},
        )
        return bool(getattr(result, "rowcount", 0))

    async def claim(
        self, session: AsyncSession | AsyncConnection, person_id: uuid.UUID, till: Till, limit: int
    ) -> list[WaitingMessage]:
        """Deliver to the till the person's open messages not there yet; return them, oldest first."""
        rows = await session.execute(
            _CLAIM,
            {"person": person_id, "store": till.store_id, "terminal": till.terminal_id, "limit": limit},
        )
        return _waiting(rows.all())

    async def resume(self, session: AsyncSession, till: Till, limit: int) -> list[WaitingMessage]:
        """The messages delivered to the till and not acknowledged, to be sent again."""
        rows = await session.execute(
            _RESUME, {"store": till.store_id, "terminal": till.terminal_id, "limit": limit}
        )
        return _waiting(rows.all(), resent=True)

    async def ack(self, session: AsyncSession, till: Till, message_ids: Sequence[uuid.UUID]) -> list[Acked]:
        """Mark messages delivered to the till acknowledged; return those that were not before."""
        if not message_ids:
            return []
        rows = await session.execute(
            _ACK, {"ids": list(message_ids), "store": till.store_id, "terminal": till.terminal_id}
        )
        return [Acked(r.message_id, r.acked_at) for r in rows]

    async def last_ack(self, session: AsyncSession, till: Till) -> Acked | None:
        """The till's latest acknowledgement."""
        row = (
            await session.execute(_LAST_ACK, {"store": till.store_id, "terminal": till.terminal_id})
        ).first()
        return None if row is None else Acked(row.message_id, row.acked_at)

    async def release(self, session: AsyncSession, till: Till) -> None:
        """The customer left the till: what it was delivered and did not acknowledge waits again."""
        await session.execute(_RELEASE, {"store": till.store_id, "terminal": till.terminal_id})

    async def expire(self, session: AsyncSession, limit: int) -> list[Expired]:
        """End at most `limit` open messages past their expiry; return them."""
        rows = await session.execute(_EXPIRE, {"limit": limit})
        return [Expired(r.message_id, r.expired_at) for r in rows]

    async def forget(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Delete the messages of forgotten persons (their erasure)."""
        if person_ids:
            await session.execute(_FORGET, {"ids": list(person_ids)})
