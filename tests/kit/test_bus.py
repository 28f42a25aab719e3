"""The event log end to end on real PostgreSQL and NATS: outbox, relay, consumer with inbox, dead letters."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import (
    EventConsumer,
    Outbox,
    OutboxRelay,
    dlq_stream,
    events_stream,
    outbox_table,
    subject_for,
    unpack,
)
from omni_kit.db import session_factory

from .support import lose_the_relays_mark, notes


def _merged(person: str) -> events_pb2.PersonsMergedEvent:
    return events_pb2.PersonsMergedEvent(
        survivor_person_id=person,
        merged_person_ids=[str(uuid.uuid4())],
        cause_identifiers=[common_pb2.Identifier(type="email", value="ada@example.com")],
    )


async def _stream_count(js: JetStreamContext, namespace: str) -> int:
    info = await js.stream_info(events_stream(namespace))
    return int(info.state.messages)


async def test_event_is_published_only_when_its_transaction_commits(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    outbox = Outbox("identity", namespace=namespace)
    sessions = session_factory(engine)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await outbox.add(session, _merged("p-rolled-back"), event_type="identity.persons_merged")
            raise RuntimeError("the state change failed")
    async with sessions() as session, session.begin():
        await session.execute(notes.insert().values(text="state change"))
        committed = await outbox.add(
            session, _merged("p-1"), event_type="identity.persons_merged", person_id="p-1"
        )

    relay = OutboxRelay(engine, context)
    assert await relay.publish_pending() == 1
    assert await relay.publish_pending() == 0
    assert await _stream_count(context, namespace) == 1

    message = await context.get_last_msg(
        events_stream(namespace), subject_for("identity.persons_merged", namespace)
    )
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == committed.id
    envelope = envelope_pb2.Envelope.FromString(message.data)
    assert (envelope.id, envelope.producer, envelope.person_id) == (committed.id, "identity", "p-1")
    assert unpack(envelope, events_pb2.PersonsMergedEvent).survivor_person_id == "p-1"


async def test_republishing_after_a_crash_is_deduplicated(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    outbox = Outbox("identity", namespace=namespace)
    async with session_factory(engine)() as session, session.begin():
        await outbox.add(session, _merged("p-2"), event_type="identity.persons_merged")
    relay = OutboxRelay(engine, context)
    # A relay that died after publishing but before marking leaves the row as it was: published again.
    assert await lose_the_relays_mark(engine, relay.publish_pending) == 1
    assert await relay.publish_pending() == 1
    assert await _stream_count(context, namespace) == 1
    assert await relay.publish_pending() == 0


async def test_a_published_row_keeps_no_payload(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    outbox = Outbox("identity", namespace=namespace)
    async with session_factory(engine)() as session, session.begin():
        published = await outbox.add(
            session, _merged("p-3"), event_type="identity.persons_merged", person_id="p-3"
        )
    relay = OutboxRelay(engine, context)
    assert await relay.publish_pending() == 1
    async with session_factory(engine)() as session, session.begin():
        staged = await outbox.add(
            session, _merged("p-4"), event_type="identity.persons_merged", person_id="p-4"
        )
    async with engine.connect() as connection:
        rows = {
            str(row.id): row
            for row in await connection.execute(
                sa.select(outbox_table.c.id, outbox_table.c.payload, outbox_table.c.published_at)
            )
        }
    # The event (its payload may hold personal data) is kept by JetStream only; the row says when.
    assert rows[published.id].payload == b"" and rows[published.id].published_at is not None
    assert rows[staged.id].payload == staged.SerializeToString() and rows[staged.id].published_at is None
    message = await context.get_last_msg(
        events_stream(namespace), subject_for("identity.persons_merged", namespace)
    )
    assert envelope_pb2.Envelope.FromString(message.data).id == published.id


async def test_consumer_applies_each_event_once(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    sessions = session_factory(engine)
    seen: list[str] = []

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        seen.append(envelope.id)
        await session.execute(notes.insert().values(text=envelope.id))

    consumer = EventConsumer(
        context,
        sessions,
        durable="test-once",
        stream=events_stream(namespace),
        subjects=[subject_for("identity.persons_merged", namespace)],
        handler=handler,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    envelope = Outbox("identity").envelope(_merged("p-3"), event_type="identity.persons_merged")
    subject = subject_for("identity.persons_merged", namespace)
    # The same event delivered twice (published under two message ids, so JetStream keeps both).
    await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": "a"})
    await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": "b"})
    for _ in range(100):
        if (
            consumer.applied >= 1
            and (await context.consumer_info(events_stream(namespace), "test-once")).num_ack_pending == 0
        ):
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(notes.c.text).where(notes.c.text == envelope.id))).all()
    assert len(rows) == 1
    assert consumer.applied == 1
    assert seen == [envelope.id]


async def test_poison_event_goes_to_dead_letter_after_bounded_retries(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    attempts = 0

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(notes.insert().values(text=f"partial-{envelope.id}"))
        raise ValueError("cannot apply")

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-poison",
        stream=events_stream(namespace),
        subjects=[subject_for("identity.persons_merged", namespace)],
        handler=handler,
        max_deliver=3,
        backoff_s=(0.05,),
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    envelope = Outbox("identity").envelope(_merged("p-4"), event_type="identity.persons_merged")
    await context.publish(
        subject_for("identity.persons_merged", namespace),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": envelope.id},
    )
    for _ in range(200):
        if consumer.dead_lettered:
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task
    assert attempts == 3
    dead = await context.get_last_msg(dlq_stream(namespace), f"{namespace}.dlq.test-poison")
    assert dead.data == envelope.SerializeToString()
    assert dead.headers is not None and "cannot apply" in dead.headers["Omni-Error"]
    async with engine.connect() as connection:
        partial = await connection.scalar(
            sa.select(sa.func.count()).select_from(notes).where(notes.c.text == f"partial-{envelope.id}")
        )
    assert partial == 0, "a failed handler's writes are rolled back"


async def test_event_that_can_never_apply_is_dead_lettered_at_once(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    attempts = 0

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        nonlocal attempts
        attempts += 1
        unpack(envelope, events_pb2.PersonCreatedEvent)  # the payload is a PersonsMergedEvent

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-permanent",
        stream=events_stream(namespace),
        subjects=[subject_for("identity.persons_merged", namespace)],
        handler=handler,
        max_deliver=5,
        backoff_s=(5.0,),
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    envelope = Outbox("identity").envelope(_merged("p-5"), event_type="identity.persons_merged")
    await context.publish(
        subject_for("identity.persons_merged", namespace),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": envelope.id},
    )
    for _ in range(100):
        if consumer.dead_lettered:
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task
    assert attempts == 1
    dead = await context.get_last_msg(dlq_stream(namespace), f"{namespace}.dlq.test-permanent")
    assert dead.headers is not None and "PersonCreatedEvent" in dead.headers["Omni-Error"]


async def test_a_batch_with_one_poison_event_still_applies_the_others(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    subject = subject_for("identity.persons_merged", namespace)
    envelopes = [
        Outbox("identity").envelope(_merged(f"p-batch-{i}"), event_type="identity.persons_merged")
        for i in range(30)
    ]
    poison = envelopes[17].id
    # Published before the consumer starts, so the first fetch takes them all as one batch.
    for envelope in envelopes:
        await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        await session.execute(notes.insert().values(text=envelope.id))
        if envelope.id == poison:
            raise ValueError("poison")

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-batch",
        stream=events_stream(namespace),
        subjects=[subject],
        handler=handler,
        max_deliver=2,
        backoff_s=(0.05,),
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    for _ in range(200):
        if consumer.dead_lettered and consumer.applied == 29:
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task
    async with engine.connect() as connection:
        written = set(await connection.scalars(sa.select(notes.c.text)))
    assert written == {e.id for e in envelopes} - {poison}
    assert consumer.applied == 29 and consumer.dead_lettered == 1
