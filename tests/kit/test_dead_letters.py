"""Replaying dead letters once their cause is fixed (omni_kit.bus.dead_letters, `omni dead-letters`): an
outbox row the stream refused is published after the stream takes it, and an event a consumer gave up on is
applied once by that consumer after its handler is fixed; nothing is left dead-lettered."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import (
    EventConsumer,
    Outbox,
    OutboxRelay,
    dlq_stream,
    events_stream,
    outbox_dead_letters_table,
    subject_for,
)
from omni_kit.bus import dead_letters as letters
from omni_kit.db import session_factory

from .support import notes

CREATED = "identity.person_created"
MERGED = "identity.persons_merged"


async def _until(condition: Callable[[], bool], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (the consumer runs in another task)
            await asyncio.sleep(0.05)


async def _dead_letters_on_stream(context: JetStreamContext, namespace: str) -> int:
    return int((await context.stream_info(dlq_stream(namespace))).state.messages)


async def test_an_outbox_row_the_stream_refused_is_published_when_replayed_after_the_fix(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    config: StreamConfig = (await context.stream_info(events_stream(namespace))).config
    config.max_msg_size = 4096  # the cause: the stream refuses messages this large
    await context.update_stream(config)
    outbox = Outbox("identity", namespace=namespace)
    event = events_pb2.PersonCreatedEvent(person_id="p-big", source="x" * 6000)
    async with session_factory(engine)() as session, session.begin():
        big = await outbox.add(session, event, event_type=CREATED, person_id="p-big")
    relay = OutboxRelay(engine, context, ack_timeout_s=1.0)
    await relay.publish_pending()
    listed = await letters.list_outbox(engine)
    assert [(d.ref, d.event_ids) for d in listed] == [(f"outbox:{big.id}", (big.id,))]
    assert "maximum" in listed[0].error.lower()

    config.max_msg_size = -1  # fixed
    await context.update_stream(config)
    outbox_ids, sequences = letters.parse_refs([listed[0].ref])
    assert (outbox_ids, sequences) == ([uuid.UUID(big.id)], [])
    assert await letters.replay_outbox(engine, outbox_ids) == [uuid.UUID(big.id)]
    assert await relay.publish_pending() == 1

    published = await context.get_last_msg(events_stream(namespace), subject_for(CREATED, namespace))
    assert published.headers is not None and published.headers["Nats-Msg-Id"] == big.id
    assert envelope_pb2.Envelope.FromString(published.data or b"").id == big.id
    assert await letters.list_outbox(engine) == []
    async with engine.connect() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(outbox_dead_letters_table)) == 0


async def test_an_event_a_consumer_gave_up_on_is_applied_once_when_replayed_after_the_fix(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    outbox = Outbox("identity", namespace=namespace)
    envelopes = [
        outbox.envelope(events_pb2.PersonsMergedEvent(survivor_person_id=f"p-{n}"), event_type=MERGED)
        for n in range(3)
    ]
    poison = envelopes[1].id
    single = outbox.envelope(events_pb2.PersonsMergedEvent(survivor_person_id="p-single"), event_type=MERGED)
    broken = {poison, single.id}

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        if envelope.id in broken:
            raise ValueError("the handler cannot apply this yet")
        await session.execute(notes.insert().values(text=envelope.id))

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="svc-replayed",
        stream=events_stream(namespace),
        subjects=[subject_for(MERGED, namespace)],
        handler=handler,
        max_deliver=2,
        backoff_s=(0.05,),
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        # Three events in one message (the poison one dead-lettered alone, its inbox entry written), and one
        # event in a message of its own.
        async with session_factory(engine)() as session, session.begin():
            await outbox.add_envelopes(session, envelopes)
            await outbox.add_envelopes(session, [single])
        await OutboxRelay(engine, context).publish_pending()
        await _until(lambda: consumer.applied == 2 and consumer.dead_lettered == 2)

        listed = await letters.list_bus(context, namespace, "svc")
        assert sorted(d.event_ids for d in listed) == sorted([(poison,), (single.id,)])
        assert {d.consumer for d in listed} == {"svc-replayed"}
        assert all("cannot apply" in d.error and d.subject == subject_for(MERGED, namespace) for d in listed)
        assert await letters.list_bus(context, namespace, "other") == []

        broken.clear()  # fixed
        _, sequences = letters.parse_refs([d.ref for d in listed])
        assert sorted(await letters.replay_bus(context, engine, namespace, "svc", sequences)) == sorted(
            sequences
        )
        await _until(lambda: consumer.applied == 4)
        await asyncio.sleep(0.5)  # time for anything applied twice to show
    finally:
        consumer.stop()
        await task

    async with engine.connect() as connection:
        rows = (
            await connection.execute(sa.select(notes.c.text, sa.func.count()).group_by(notes.c.text))
        ).all()
    assert dict(rows) == {e.id: 1 for e in [*envelopes, single]}
    assert consumer.applied == 4 and consumer.dead_lettered == 2
    assert await letters.list_bus(context, namespace, "svc") == []
    assert await _dead_letters_on_stream(context, namespace) == 0


async def test_the_omni_command_lists_and_replays_a_services_dead_letters(
    engine: AsyncEngine, js: tuple[JetStreamContext, str], nats_server: Any
) -> None:
    context, namespace = js
    outbox = Outbox("identity", namespace=namespace)
    envelope = outbox.envelope(events_pb2.PersonCreatedEvent(person_id="p-cli"), event_type=CREATED)
    async with engine.begin() as connection:
        await connection.execute(
            outbox_dead_letters_table.insert().values(
                id=uuid.UUID(envelope.id),
                subject=subject_for(CREATED, namespace),
                type=CREATED,
                person_id="p-cli",
                payload=envelope.SerializeToString(),
                headers={},
                error="refused by the stream",
                created_at=sa.func.now(),
            )
        )
    environment = {
        **os.environ,
        "OMNI_IDENTITY_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "OMNI_IDENTITY_NATS_URL": nats_server.url,
        "OMNI_IDENTITY_EVENT_NAMESPACE": namespace,
        "OMNI_IDENTITY_GRPC_HOST": "127.0.0.1",  # else identity asks for its production secrets
    }

    async def omni(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("omni")),
            *args,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await omni("dead-letters", "list", "identity")
    assert code == 0, err
    assert f"outbox:{envelope.id}" in out and "refused by the stream" in out
    code, _, err = await omni("dead-letters", "replay", "identity", "--all")
    assert code == 0 and "replayed 1 outbox and 0 consumer dead letters of identity" in err, err
    assert await OutboxRelay(engine, context).publish_pending() == 1
    published = await context.get_last_msg(events_stream(namespace), subject_for(CREATED, namespace))
    assert published.headers is not None and published.headers["Nats-Msg-Id"] == envelope.id
    assert await letters.list_outbox(engine) == []
