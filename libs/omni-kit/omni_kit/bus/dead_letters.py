"""What an operator does with dead letters once their cause is fixed: list them, and replay them.

A service has two kinds:
- outbox dead letters: rows its relay could not publish (too large for the server, refused by the stream for
  good), in its own `outbox_dead_letters` table. Replaying one moves it back into the outbox (same event id,
  subject and payload), and the service's relay publishes it as it publishes any row.
- bus dead letters: events its consumers gave up on (poison after max_deliver, undecodable, too old), on
  the dead-letter stream under `<namespace>.dlq.<service>-<consumer>`, with the error in `Omni-Error` and the
  subject they came from in `Omni-Original-Subject`. Replaying one publishes it again on that subject and
  then deletes it from the dead-letter stream. The consumer that gave up is made to apply it: its inbox
  entry for the event (written when an event of a batch is dead-lettered alone, so that the batch's
  redelivery skips it) is removed first. Every other consumer of the subject receives it too and skips it,
  having applied it already (the inbox); the copy carries its own Nats-Msg-Id (replay-<sequence>), so
  replaying twice within JetStream's duplicate window publishes once.

Each dead letter has a reference, `outbox:<event id>` or `bus:<stream sequence>`, which `omni dead-letters
list` shows and `omni dead-letters replay` takes (or `--all`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.bus.envelope import envelopes_in
from omni_kit.bus.streams import dlq_stream
from omni_kit.bus.tables import inbox_table, outbox_dead_letters_table, outbox_table

ERROR_HEADER = "Omni-Error"
ORIGINAL_SUBJECT_HEADER = "Omni-Original-Subject"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as listed."""

    ref: str
    """outbox:<event id> or bus:<stream sequence>: what replay takes."""
    kind: str
    """"outbox" or "bus"."""
    subject: str
    """Where it was (or is to be) published."""
    consumer: str
    """For a bus dead letter, the consumer that gave up on it; empty for the outbox."""
    event_ids: tuple[str, ...]
    error: str
    size: int
    at: datetime | None


async def list_outbox(engine: AsyncEngine) -> list[DeadLetter]:
    """The outbox dead letters of a service's database, oldest first."""
    table = outbox_dead_letters_table
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.select(
                    table.c.id,
                    table.c.subject,
                    table.c.error,
                    sa.func.length(table.c.payload).label("size"),
                    table.c.dead_lettered_at,
                ).order_by(table.c.dead_lettered_at, table.c.id)
            )
        ).all()
    return [
        DeadLetter(
            f"outbox:{row.id}",
            "outbox",
            row.subject,
            "",
            (str(row.id),),
            row.error,
            row.size,
            row.dead_lettered_at,
        )
        for row in rows
    ]


async def replay_outbox(engine: AsyncEngine, ids: Collection[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Move outbox dead letters (these, or all with None) back into the outbox, in one transaction; return
    the ids moved. The relay publishes them as any staged row (its next poll, or at once when woken)."""
    table = outbox_dead_letters_table
    async with engine.begin() as connection:
        query = sa.select(table).order_by(table.c.id).with_for_update()
        if ids is not None:
            query = query.where(table.c.id.in_(list(ids)))
        rows = (await connection.execute(query)).all()
        if not rows:
            return []
        staged = insert(outbox_table).values(
            [
                {
                    "id": row.id,
                    "subject": row.subject,
                    "type": row.type,
                    "person_id": row.person_id,
                    "payload": row.payload,
                    "headers": row.headers,
                }
                for row in rows
            ]
        )
        # A part of a batch whose other parts were published keeps the batch's row (published, emptied)
        # under its id: that row is staged again with the part.
        staged = staged.on_conflict_do_update(
            index_elements=[outbox_table.c.id],
            set_={
                "subject": staged.excluded.subject,
                "type": staged.excluded.type,
                "person_id": staged.excluded.person_id,
                "payload": staged.excluded.payload,
                "headers": staged.excluded.headers,
                "created_at": sa.func.now(),
                "published_at": None,
            },
        )
        await connection.execute(staged)
        moved = [row.id for row in rows]
        await connection.execute(table.delete().where(table.c.id.in_(moved)))
    return moved


def _dlq_filter(namespace: str) -> str:
    return f"{namespace.lower()}.dlq.>"


def _consumer_of(subject: str, namespace: str) -> str:
    return subject.removeprefix(f"{namespace.lower()}.dlq.")


async def _bus_messages(
    js: JetStreamContext, namespace: str, service: str
) -> list[tuple[int, str, dict[str, str], bytes]]:
    """(sequence, consumer, headers, data) of the service's consumers' dead letters, oldest first."""
    stream = dlq_stream(namespace)
    found: list[tuple[int, str, dict[str, str], bytes]] = []
    sequence = 1
    while True:
        try:
            message = await js.get_msg(stream, seq=sequence, subject=_dlq_filter(namespace), next=True)
        except NotFoundError:
            return found
        assert message.seq is not None and message.subject is not None
        consumer = _consumer_of(message.subject, namespace)
        if consumer.startswith(f"{service}-"):
            found.append((message.seq, consumer, dict(message.headers or {}), message.data or b""))
        sequence = message.seq + 1


def _event_ids(data: bytes, headers: dict[str, str]) -> tuple[str, ...]:
    try:
        return tuple(envelope.id for envelope in envelopes_in(data, headers))
    except Exception:
        return ()  # undecodable: it is listed (and can be replayed) all the same


async def list_bus(js: JetStreamContext, namespace: str, service: str) -> list[DeadLetter]:
    """The dead letters of a service's consumers on the dead-letter stream, oldest first."""
    return [
        DeadLetter(
            f"bus:{sequence}",
            "bus",
            headers.get(ORIGINAL_SUBJECT_HEADER, ""),
            consumer,
            _event_ids(data, headers),
            headers.get(ERROR_HEADER, ""),
            len(data),
            None,
        )
        for sequence, consumer, headers, data in await _bus_messages(js, namespace, service)
    ]


async def replay_bus(
    js: JetStreamContext,
    engine: AsyncEngine,
    namespace: str,
    service: str,
    sequences: Collection[int] | None = None,
) -> list[int]:
    """Publish the service's consumers' dead letters (these sequences, or all with None) again on the
    subject they came from, for their consumer to apply, and delete them from the dead-letter stream; return
    the sequences replayed. See the module's doc for what the other consumers do with them."""
    replayed = []
    for sequence, consumer, headers, data in await _bus_messages(js, namespace, service):
        if sequences is not None and sequence not in sequences:
            continue
        subject = headers.get(ORIGINAL_SUBJECT_HEADER)
        if not subject:
            raise ValueError(
                f"dead letter bus:{sequence} does not say where it came from ({ORIGINAL_SUBJECT_HEADER})"
            )
        ids = [uuid.UUID(event_id) for event_id in _event_ids(data, headers)]
        if len(ids) == 1:
            # Consumers dead-letter a batch's events one by one; a whole batch only when it cannot be read.
            async with engine.begin() as connection:
                await connection.execute(
                    inbox_table.delete().where(
                        inbox_table.c.consumer == consumer, inbox_table.c.event_id.in_(ids)
                    )
                )
        again = {k: v for k, v in headers.items() if k not in (ERROR_HEADER, ORIGINAL_SUBJECT_HEADER)}
        again["Nats-Msg-Id"] = f"replay-{namespace}-{sequence}"
        await js.publish(subject, data, headers=again)
        await js.delete_msg(dlq_stream(namespace), sequence)
        replayed.append(sequence)
    return replayed


def parse_refs(refs: Collection[str]) -> tuple[list[uuid.UUID], list[int]]:
    """Split references (outbox:<event id>, bus:<sequence>) into outbox ids and bus sequences; ValueError for
    one that is neither."""
    outbox: list[uuid.UUID] = []
    bus: list[int] = []
    for ref in refs:
        kind, _, value = ref.partition(":")
        try:
            if kind == "outbox":
                outbox.append(uuid.UUID(value))
                continue
            if kind == "bus" and int(value) > 0:
                bus.append(int(value))
                continue
        except ValueError:
            pass
        raise ValueError(f"{ref!r} is not a dead letter reference (outbox:<event id> or bus:<sequence>)")
    return outbox, bus
