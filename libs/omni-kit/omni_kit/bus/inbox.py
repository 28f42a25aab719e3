"""How long the inbox remembers applied events, and why forgetting them keeps every event applied at most once.

A consumer records each event id it applies in the inbox, in the transaction of the effect, and skips an id
it finds there. The table would grow for ever, so ids are purged once their event is older than the
retention (30 days by default). Event ids are UUIDv7: each holds the time its event was made, so "older"
is read from the id itself, and the purge walks the inbox's primary key (consumer, event_id) as a range.

Purging cannot let an event be applied twice, because the consumer refuses (dead-letters, never applies) an
event older than the retention less a margin. Let an event be made at t (its id's time):
- it is applied only if t >= now - retention + margin, at a time A;
- its inbox row is purged only at a time P with t < P - retention, so P > A + margin;
- a copy delivered at D >= P has t < D - retention + margin: refused; a copy delivered before P is skipped
  by the inbox row, which is still there.
The margin (one hour) covers the clocks of the replicas that purge and apply differing.

The retention must outlive every way a copy can come back: JetStream keeps a message for the stream's max
age (7 days) and drops a republished copy within its duplicate window (15 minutes); a durable consumer
created again replays the stream from the start; a relay that died between publishing and marking
republishes at its next start, which can be later than the window. Thirty days leaves weeks for those
(and for an outbox that could not publish for days); an event delayed longer than the retention is
dead-lettered with the reason, never applied twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from omni.events.v1 import envelope_pb2
from omni_kit.bus.envelope import PermanentError
from omni_kit.bus.streams import DUPLICATE_WINDOW_S, EVENTS_MAX_AGE_S

DEFAULT_INBOX_RETENTION_S = 30 * 24 * 3600
"""How long applied event ids are remembered by default."""
MIN_INBOX_RETENTION_S = 2 * EVENTS_MAX_AGE_S + DUPLICATE_WINDOW_S
"""The shortest retention allowed: twice the stream's max age, plus its duplicate window."""
RETENTION_MARGIN = timedelta(hours=1)
"""How much younger than the retention an event must be to be applied (clock differences between replicas)."""
PURGE_BATCH = 5000
"""Inbox rows deleted per statement (and transaction) when purging."""

# Ids of one consumer below a UUIDv7 bound, UUIDv7 only (version nibble 7): an id of another version says
# nothing of its event's age and is kept.
_PURGE = sa.text(
    "DELETE FROM inbox WHERE consumer = :consumer AND event_id = ANY(ARRAY("
    "SELECT event_id FROM inbox WHERE consumer = :consumer AND event_id < :bound "
    "AND substr(CAST(event_id AS text), 15, 1) = '7' ORDER BY event_id LIMIT :limit))"
)


class TooOldToApply(PermanentError):
    """An event older than the inbox's retention: whether it was applied may be forgotten, so it is not."""


def made_at(event_id: uuid.UUID) -> datetime | None:
    """The time a UUIDv7 was made (millisecond precision), or None for ids of other versions."""
    if event_id.version != 7:
        return None
    return datetime.fromtimestamp((event_id.int >> 80) / 1000, tz=UTC)


def uuid7_bound(at: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of the instant `at`: every UUIDv7 made earlier sorts below it, none later."""
    milliseconds = int(at.timestamp() * 1000)
    return uuid.UUID(int=(milliseconds << 80) | (7 << 76))


def check_age(
    envelope: envelope_pb2.Envelope, event_id: uuid.UUID, now: datetime, retention_s: float
) -> None:
    """Raise TooOldToApply for an event the inbox may have forgotten applying (see the module's doc)."""
    made = made_at(event_id)
    if made is not None and made < now - timedelta(seconds=retention_s) + RETENTION_MARGIN:
        raise TooOldToApply(
            f"event {envelope.id} ({envelope.type}) was made {made.isoformat()}, longer ago than the inbox "
            f"remembers ({retention_s / 86400:g} days): it cannot be applied at most once"
        )


async def purge_inbox(
    sessions: async_sessionmaker[AsyncSession],
    consumer: str,
    retention_s: float,
    *,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
) -> int:
    """Forget the consumer's applied events older than the retention, `batch` rows per transaction; return
    how many went."""
    bound = uuid7_bound((now or datetime.now(UTC)) - timedelta(seconds=retention_s))
    total = 0
    while True:
        async with sessions() as session, session.begin():
            result = await session.execute(_PURGE, {"consumer": consumer, "bound": bound, "limit": batch})
        count = int(getattr(result, "rowcount", 0) or 0)
        total += count
        if count < batch:
            return total
