"""No event stalls the log: an envelope too large is refused when staged, a row the server cannot take is split
or moved aside while the rows behind it are published, and the inbox forgets what it no longer needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import nats
import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import (
    BATCH_HEADER,
    EnvelopeTooLarge,
    EventConsumer,
    Outbox,
    OutboxRelay,
    dlq_stream,
    ensure_streams,
    envelopes_in,
    events_stream,
    inbox_table,
    outbox_dead_letters_table,
    outbox_table,
    subject_for,
)
from omni_kit.bus.inbox import made_at, purge_inbox
from omni_kit.db import session_factory
from omni_kit.embedded import EmbeddedNats
from omni_kit.errors import status_details
from omni_kit.grpc_server import GrpcServer
from omni_kit.runtime import Runtime
from omni_kit.settings import ServiceSettings

from .support import lose_the_relays_mark, notes

CREATED = "identity.person_created"
MAX_PAYLOAD = 16 * 1024


@pytest.fixture(scope="module")
def small_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A NATS server that takes messages of at most 16 KiB (payload and headers)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("small-nats"), max_payload=MAX_PAYLOAD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def small_js(small_nats: EmbeddedNats) -> AsyncIterator[tuple[JetStreamContext, str]]:
    client = await nats.connect(small_nats.url)
    assert client.max_payload == MAX_PAYLOAD
    namespace = "t" + uuid.uuid4().hex[:10]
    context = client.jetstream()
    await ensure_streams(context, namespace=namespace)
    yield context, namespace
    await client.drain()


def _created(person: str, size: int = 0) -> events_pb2.PersonCreatedEvent:
    """A person_created event of about `size` bytes (its person id padded)."""
    return events_pb2.PersonCreatedEvent(person_id=person + "x" * size)


def _envelope(outbox: Outbox, person: str, size: int = 0) -> envelope_pb2.Envelope:
    return outbox.envelope(_created(person, size), event_type=CREATED, person_id=person)


async def _published_events(
    js: JetStreamContext, namespace: str
) -> list[tuple[str, dict[str, str], list[str]]]:
    """Every message of the events stream: its message id, headers and the ids of the events it holds."""
    info = await js.stream_info(events_stream(namespace))
    messages = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(events_stream(namespace), sequence)
        headers = dict(message.headers or {})
        ids = [e.id for e in envelopes_in(message.data or b"", headers)]
        messages.append((headers["Nats-Msg-Id"], headers, ids))
    return messages


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - counters of another task, nothing to wait on
            await asyncio.sleep(0.05)


# --- staging ---


async def test_staging_an_envelope_over_the_limit_is_refused_and_writes_nothing(engine: AsyncEngine) -> None:
    outbox = Outbox("identity", max_envelope_bytes=8 * 1024)
    sessions = session_factory(engine)
    with pytest.raises(EnvelopeTooLarge) as refused:
        async with sessions() as session, session.begin():
            await session.execute(notes.insert().values(text="the state change"))
            await outbox.add(session, _created("p-small"), event_type=CREATED)
            await outbox.add(session, _created("p-big", 9000), event_type=CREATED, field="person.notes")
    assert [v.field for v in refused.value.violations] == ["person.notes"]
    assert refused.value.reason == "EVENT_TOO_LARGE" and refused.value.limit == 8 * 1024
    async with engine.connect() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 0
        assert await connection.scalar(sa.select(sa.func.count()).select_from(notes)) == 0

    # Many at once: the first one too large is named by its own field, before anything is written.
    envelopes = [_envelope(outbox, f"p-{n}", 9000 if n == 2 else 0) for n in range(4)]
    with pytest.raises(EnvelopeTooLarge) as refused:
        async with sessions() as session, session.begin():
            await outbox.add_envelopes(session, envelopes, fields=[f"events[{n}]" for n in range(4)])
    assert [v.field for v in refused.value.violations] == ["events[2]"]
    assert not outbox.fits(envelopes[2]) and outbox.fits(envelopes[1])


async def test_an_rpc_staging_an_event_too_large_answers_invalid_argument(engine: AsyncEngine) -> None:
    outbox = Outbox("identity", max_envelope_bytes=8 * 1024)
    sessions = session_factory(engine)
    service = "omni.test.v1.StagingService"

    async def stage(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with sessions() as session, session.begin():
            await session.execute(notes.insert().values(text="stage " + request.decode()[:20]))
            await outbox.add(session, _created(request.decode()), event_type=CREATED, field="person.name")
        return b"ok"

    def register(server: grpc.aio.Server) -> None:
        handlers = {"Stage": grpc.unary_unary_rpc_method_handler(stage)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    server = GrpcServer(
        domain="omni.test", service_names=[service], register=register, host="127.0.0.1", port=0
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{service}/Stage")
            assert await call(b"small", timeout=5) == b"ok"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(b"big" + b"y" * 10_000, timeout=5)
    finally:
        await server.stop(0)
    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"person.name"}
    assert details.error_info is not None and details.error_info.reason == "EVENT_TOO_LARGE"
    async with engine.connect() as connection:
        assert (await connection.execute(sa.select(notes.c.text))).scalars().all() == ["stage small"]
        assert await connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 1


async def test_a_service_limits_its_events_to_what_its_nats_server_takes(
    small_nats: EmbeddedNats, make_database: Any
) -> None:
    settings = ServiceSettings(database_url=make_database("limits"), nats_url=small_nats.url)
    assert settings.outbox_max_envelope_bytes == 512 * 1024
    runtime = Runtime("limits", settings)
    await runtime.open()
    try:
        assert runtime.outbox.max_envelope_bytes == MAX_PAYLOAD - 4096
    finally:
        await runtime.close()


def test_the_inbox_retention_must_outlive_the_stream() -> None:
    with pytest.raises(ValidationError, match="inbox_retention_s"):
        ServiceSettings(
            database_url="postgresql+asyncpg://x/y", nats_url="nats://x", inbox_retention_s=86_400
        )


# --- publishing ---


async def test_a_row_too_large_for_the_server_is_moved_aside_and_the_rows_behind_it_are_published(
    engine: AsyncEngine, small_js: tuple[JetStreamContext, str], caplog: pytest.LogCaptureFixture
) -> None:
    context, namespace = small_js
    outbox = Outbox(
        "identity", namespace=namespace
    )  # the default limit: rows as an older version staged them
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        before = await outbox.add(session, _created("p-before"), event_type=CREATED, person_id="p-before")
    async with sessions() as session, session.begin():
        big = await outbox.add(session, _created("p-big", 20_000), event_type=CREATED, person_id="p-big")
    # Ten events staged together, one row of about 30 KiB: too large together, each fits.
    run = [_envelope(outbox, f"p-run-{n}", 3000) for n in range(10)]
    async with sessions() as session, session.begin():
        await outbox.add_envelopes(session, run)
        after = await outbox.add(session, _created("p-after"), event_type=CREATED, person_id="p-after")

    relay = OutboxRelay(engine, context)
    with caplog.at_level(logging.ERROR, logger="omni_kit.bus.outbox"):
        assert await relay.publish_pending() == 4
    assert await relay.publish_pending() == 0

    published = await _published_events(context, namespace)
    events = [event for _, _, ids in published for event in ids]
    assert events == [before.id, *[e.id for e in run], after.id], "in order, all but the one too large"
    parts = [
        (message_id, headers, ids)
        for message_id, headers, ids in published
        if set(ids) <= {e.id for e in run}
    ]
    assert len(parts) >= 2, "the run went as several messages"
    for message_id, headers, ids in parts:
        assert message_id == ids[0], "each part under its first event's id"
        assert (BATCH_HEADER in headers) == (len(ids) > 1)

    async with engine.connect() as connection:
        dead = (await connection.execute(sa.select(outbox_dead_letters_table))).one()
        left = {row.id: row for row in await connection.execute(sa.select(outbox_table))}
    assert str(dead.id) == big.id and dead.type == CREATED and dead.person_id == "p-big"
    assert envelope_pb2.Envelope.FromString(dead.payload).id == big.id
    assert f"max_payload of {MAX_PAYLOAD}" in dead.error
    assert uuid.UUID(big.id) not in left, "moved out of the outbox"
    assert all(row.published_at is not None for row in left.values())
    assert relay.dead_lettered == 1
    assert any(big.id in record.getMessage() for record in caplog.records if record.levelno == logging.ERROR)

    # A relay that died before marking publishes the parts again under the same ids: JetStream drops them.
    async with engine.begin() as connection:
        await connection.execute(outbox_table.update().values(published_at=None))
    count = len(published)
    await lose_the_relays_mark(engine, relay.publish_pending)
    assert len(await _published_events(context, namespace)) == count


async def test_a_message_jetstream_refuses_for_good_is_moved_aside(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    info = await context.stream_info(events_stream(namespace))
    config: StreamConfig = info.config
    config.max_msg_size = 4096  # the stream refuses larger messages (400), though the server takes them
    await context.update_stream(config)
    outbox = Outbox("identity", namespace=namespace)
    async with session_factory(engine)() as session, session.begin():
        refused = await outbox.add(session, _created("p-refused", 6000), event_type=CREATED)
        kept = await outbox.add(session, _created("p-kept"), event_type="identity.person_forgotten")

    relay = OutboxRelay(engine, context, ack_timeout_s=1.0)
    assert await relay.publish_pending() == 2
    published = await _published_events(context, namespace)
    assert [ids for _, _, ids in published] == [[kept.id]]
    async with engine.connect() as connection:
        dead = (await connection.execute(sa.select(outbox_dead_letters_table))).one()
    assert str(dead.id) == refused.id and "maximum" in dead.error.lower()


# --- the inbox ---


def _made(at: datetime) -> uuid.UUID:
    """A UUIDv7 made at `at`."""
    random = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return uuid.UUID(int=(int(at.timestamp() * 1000) << 80) | (7 << 76) | (2 << 62) | random)


async def _inbox(engine: AsyncEngine) -> set[tuple[str, uuid.UUID]]:
    async with engine.connect() as connection:
        return {(row.consumer, row.event_id) for row in await connection.execute(sa.select(inbox_table))}


async def test_the_inbox_forgets_events_older_than_its_retention_in_batches(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    old = [_made(now - timedelta(days=40, minutes=n)) for n in range(7)]
    recent = [_made(now - timedelta(days=29)), _made(now)]
    not_v7 = uuid.uuid4()
    elsewhere = _made(now - timedelta(days=40))
    async with engine.begin() as connection:
        await connection.execute(
            inbox_table.insert(),
            [{"consumer": "c", "event_id": e} for e in [*old, *recent, not_v7]]
            + [{"consumer": "other", "event_id": elsewhere}],
        )
    made = made_at(old[0])
    assert made is not None and abs(made - (now - timedelta(days=40))) < timedelta(seconds=1)

    purged = await purge_inbox(session_factory(engine), "c", 30 * 86400, batch=3)

    assert purged == len(old)
    assert await _inbox(engine) == {("c", e) for e in [*recent, not_v7]} | {("other", elsewhere)}


async def test_a_consumer_purges_its_inbox_and_never_applies_an_event_older_than_it_remembers(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    now = datetime.now(UTC)
    forgotten = _made(now - timedelta(days=31))
    async with engine.begin() as connection:
        await connection.execute(inbox_table.insert().values(consumer="test-aged", event_id=forgotten))

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        await session.execute(notes.insert().values(text=envelope.id))

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-aged",
        stream=events_stream(namespace),
        subjects=[subject_for(CREATED, namespace)],
        handler=handler,
        inbox_retention_s=30 * 86400,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        outbox = Outbox("identity")
        # The event the purge forgot comes again (a copy republished late): it must not be applied.
        aged = _envelope(outbox, "p-aged")
        aged.id = str(forgotten)
        fresh = _envelope(outbox, "p-fresh")
        for envelope in (aged, fresh):
            await context.publish(
                subject_for(CREATED, namespace),
                envelope.SerializeToString(),
                headers={"Nats-Msg-Id": envelope.id},
            )
        await _until(lambda: consumer.applied == 1 and consumer.dead_lettered == 1)
    finally:
        consumer.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
    async with engine.connect() as connection:
        assert (await connection.execute(sa.select(notes.c.text))).scalars().all() == [fresh.id]
    assert await _inbox(engine) == {("test-aged", uuid.UUID(fresh.id))}, "the old id was purged"
    dead = await context.get_last_msg(dlq_stream(namespace), f"{namespace}.dlq.test-aged")
    assert dead.headers is not None and "longer ago than the inbox remembers" in dead.headers["Omni-Error"]
