"""A consumer whose database goes away: the events it cannot apply for want of the database wait for it, and do
not use up their deliveries (JetStream counts every redelivery, a nak as much as an expired ack wait), so an
outage longer than max_deliver x backoff dead-letters nothing; each event is applied once when it is back.

The PostgreSQL here is this module's own, on a fixed port, so stopping it disturbs no other test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import EventConsumer, Outbox, bus_metadata, dlq_stream, events_stream, subject_for
from omni_kit.db import create_engine, session_factory
from omni_kit.embedded import EmbeddedPostgres, free_port
from omni_kit.errors import Unavailable

from .support import notes, test_metadata


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own, on a fixed port so that it comes back where the consumer looks."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("consumer-outage-pg"), free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_engine(own_postgres: EmbeddedPostgres) -> AsyncIterator[AsyncEngine]:
    name = f"bus_{uuid.uuid4().hex[:12]}"
    own_postgres.create_database(name)
    engine = create_engine(own_postgres.url(name), application_name="omni-test-consumer-outage")
    async with engine.begin() as connection:
        await connection.run_sync(bus_metadata.create_all)
        await connection.run_sync(test_metadata.create_all)
    try:
        yield engine
    finally:
        if not own_postgres.is_running():
            own_postgres.start()
        await engine.dispose()


async def _until(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (polls state in other processes too)
            await asyncio.sleep(0.05)


async def _true(value: bool) -> bool:
    return value


async def _dead_letters(context: JetStreamContext, namespace: str) -> int:
    return int((await context.stream_info(dlq_stream(namespace))).state.messages)


async def test_an_outage_longer_than_the_delivery_budget_dead_letters_nothing(
    own_postgres: EmbeddedPostgres, own_engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    subject = subject_for("identity.persons_merged", namespace)

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        await session.execute(notes.insert().values(text=envelope.id))

    max_deliver, backoff_s, ack_wait_s = 3, 0.05, 1.5
    consumer = EventConsumer(
        context,
        session_factory(own_engine),
        durable="test-outage",
        stream=events_stream(namespace),
        subjects=[subject],
        handler=handler,
        max_deliver=max_deliver,
        backoff_s=(backoff_s,),
        ack_wait_s=ack_wait_s,
        batch_size=10,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())

    def merged(i: int) -> envelope_pb2.Envelope:
        event = events_pb2.PersonsMergedEvent(
            survivor_person_id=f"p-{i}", merged_person_ids=[str(uuid.uuid4())]
        )
        return Outbox("identity").envelope(event, event_type="identity.persons_merged")

    async def publish(envelope: envelope_pb2.Envelope) -> None:
        await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})

    try:
        before = [merged(i) for i in range(5)]
        for envelope in before:
            await publish(envelope)
        await _until(lambda: _true(consumer.applied == len(before)), within=10)

        own_postgres.stop()
        during = [merged(i) for i in range(5, 40)]
        for envelope in during:
            await publish(envelope)
        # Far longer than max_deliver x backoff, and than the ack wait several times over.
        await asyncio.sleep(max(max_deliver * backoff_s * 20, ack_wait_s * 3))
        assert consumer.dead_lettered == 0
        own_postgres.start()

        everything = before + during
        await _until(lambda: _true(consumer.applied == len(everything)), within=30)

        async def all_acked() -> bool:
            info = await context.consumer_info(events_stream(namespace), "test-outage")
            return info.num_ack_pending == 0

        await _until(all_acked, within=10)
    finally:
        consumer.stop()
        await task

    async with own_engine.connect() as connection:
        rows = (
            await connection.execute(sa.select(notes.c.text, sa.func.count()).group_by(notes.c.text))
        ).all()
    assert {text: count for text, count in rows} == {e.id: 1 for e in everything}
    assert consumer.dead_lettered == 0
    assert await _dead_letters(context, namespace) == 0
    info = await context.consumer_info(events_stream(namespace), "test-outage")
    assert info.num_redelivered == 0, "waiting for the database used up deliveries"


async def test_a_service_answering_unavailable_uses_up_no_delivery(
    own_engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    """A handler that calls another service which is down (omni_kit's Unavailable) waits for it the same way."""
    context, namespace = js
    subject = subject_for("identity.persons_merged", namespace)
    refusals = 0

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        nonlocal refusals
        if refusals < 8:
            refusals += 1
            raise Unavailable(message="identity is unavailable", reason="IDENTITY_UNAVAILABLE")
        await session.execute(notes.insert().values(text=envelope.id))

    consumer = EventConsumer(
        context,
        session_factory(own_engine),
        durable="test-unavailable",
        stream=events_stream(namespace),
        subjects=[subject],
        handler=handler,
        max_deliver=2,
        backoff_s=(0.05,),
        outage_wait_max_s=0.2,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    event = events_pb2.PersonsMergedEvent(survivor_person_id="p-x", merged_person_ids=[str(uuid.uuid4())])
    envelope = Outbox("identity").envelope(event, event_type="identity.persons_merged")
    await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    try:
        await _until(lambda: _true(consumer.applied == 1), within=20)
    finally:
        consumer.stop()
        await task
    assert refusals == 8 and consumer.dead_lettered == 0
    assert await _dead_letters(context, namespace) == 0


async def test_another_failure_of_a_service_called_still_counts_toward_dead_lettering(
    own_engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    """A service that answers, but fails (INTERNAL: maybe the event's own doing), is no outage: the event is
    dead-lettered after its deliveries rather than held for ever in front of the others."""
    context, namespace = js
    subject = subject_for("identity.persons_merged", namespace)
    calls = 0

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        nonlocal calls
        calls += 1
        raise Unavailable(message="identity failed (INTERNAL): internal error", reason="IDENTITY_FAILED")

    consumer = EventConsumer(
        context,
        session_factory(own_engine),
        durable="test-failed",
        stream=events_stream(namespace),
        subjects=[subject],
        handler=handler,
        max_deliver=2,
        backoff_s=(0.05,),
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    event = events_pb2.PersonsMergedEvent(survivor_person_id="p-y", merged_person_ids=[str(uuid.uuid4())])
    envelope = Outbox("identity").envelope(event, event_type="identity.persons_merged")
    await context.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    try:
        await _until(lambda: _true(consumer.dead_lettered == 1), within=20)
    finally:
        consumer.stop()
        await task
    assert calls == 2 and consumer.applied == 0
