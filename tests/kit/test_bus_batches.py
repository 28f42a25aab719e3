"""Events staged together travel together: outbox rows holding runs of events, published as one message."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import (
    BATCH_HEADER,
    EventConsumer,
    Outbox,
    OutboxRelay,
    PermanentError,
    dlq_stream,
    envelopes_in,
    events_stream,
    outbox_rows,
    subject_for,
    unpack,
)
from omni_kit.bus.envelope import length_delimited, varint
from omni_kit.db import session_factory

from .support import lose_the_relays_mark, notes

MERGED = "identity.persons_merged"
CREATED = "identity.person_created"


def _envelope(event_type: str, person: str) -> envelope_pb2.Envelope:
    payload: Any
    if event_type == MERGED:
        payload = events_pb2.PersonsMergedEvent(
            survivor_person_id=person,
            merged_person_ids=[str(uuid.uuid4())],
            cause_identifiers=[common_pb2.Identifier(type="email", value="ada@example.com")],
        )
    else:
        payload = events_pb2.PersonCreatedEvent(person_id=person)
    return Outbox("identity").envelope(payload, event_type=event_type, person_id=person)


def _ids(envelopes: list[envelope_pb2.Envelope]) -> list[str]:
    return [e.id for e in envelopes]


# --- grouping (no servers) ---


def test_consecutive_events_of_one_type_share_a_row_and_order_is_kept() -> None:
    events = [
        _envelope(CREATED, "p1"),
        _envelope(CREATED, "p2"),
        _envelope(MERGED, "p1"),
        _envelope(CREATED, "p3"),
    ]
    rows = outbox_rows(events, "omni")
    assert rows.types == [CREATED, MERGED, CREATED]
    assert rows.subjects == [subject_for(t, "omni") for t in rows.types]
    assert rows.ids == [uuid.UUID(events[0].id), uuid.UUID(events[2].id), uuid.UUID(events[3].id)]
    batch_headers = json.loads(rows.headers[0])
    assert batch_headers[BATCH_HEADER] == "2"
    assert BATCH_HEADER not in json.loads(rows.headers[1])
    # A row of one event is the envelope itself; a run is an EnvelopeBatch of the same envelopes.
    assert rows.payloads[1] == events[2].SerializeToString()
    assert _ids(envelopes_in(rows.payloads[0], batch_headers)) == _ids(events[:2])
    assert envelopes_in(rows.payloads[0], batch_headers)[1] == events[1]


def test_a_row_names_its_person_only_when_every_event_concerns_it() -> None:
    same = outbox_rows([_envelope(CREATED, "p1"), _envelope(CREATED, "p1")], "omni")
    mixed = outbox_rows([_envelope(CREATED, "p1"), _envelope(CREATED, "p2")], "omni")
    nobody = outbox_rows([_envelope(CREATED, "")], "omni")
    assert (same.person_ids, mixed.person_ids, nobody.person_ids) == (["p1"], [None], [None])


def test_runs_are_cut_at_the_event_and_size_limits() -> None:
    events = [_envelope(CREATED, f"p{i}") for i in range(7)]
    by_count = outbox_rows(events, "omni", max_events=3)
    counts = [int(json.loads(h).get(BATCH_HEADER, "1")) for h in by_count.headers]
    assert counts == [3, 3, 1]
    size = len(events[0].SerializeToString())
    by_bytes = outbox_rows(events, "omni", max_bytes=2 * (size + 5))
    assert all(len(p) <= 2 * (size + 5) for p in by_bytes.payloads)
    unpacked = [
        e.id
        for payload, headers in zip(by_bytes.payloads, by_bytes.headers, strict=True)
        for e in envelopes_in(payload, json.loads(headers))
    ]
    assert unpacked == _ids(events)


def test_fields_written_by_hand_are_protobuf_s_own_encoding() -> None:
    for size in (1, 127, 128, 300, 16_383, 16_384, 70_000):  # proto3 omits an empty string
        value = "x" * size
        assert length_delimited(1, value.encode()) == envelope_pb2.Envelope(id=value).SerializeToString()
    assert [varint(n) for n in (0, 127, 128, 2**63)] == [b"\x00", b"\x7f", b"\x80\x01", b"\x80" * 9 + b"\x01"]


def test_no_events_no_rows() -> None:
    assert len(outbox_rows([], "omni")) == 0


# --- relay and consumer on real PostgreSQL and NATS ---


async def _stage(engine: AsyncEngine, namespace: str, envelopes: list[envelope_pb2.Envelope]) -> None:
    async with session_factory(engine)() as session, session.begin():
        await Outbox("identity", namespace=namespace).add_envelopes(session, envelopes)


async def test_a_run_is_published_as_one_message_under_its_first_event_id(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    events = [_envelope(CREATED, f"p{i}") for i in range(50)]
    await _stage(engine, namespace, events)
    relay = OutboxRelay(engine, context)
    # The relay dies after publishing, before marking: the row is published again below.
    assert await lose_the_relays_mark(engine, relay.publish_pending) == 1
    info = await context.stream_info(events_stream(namespace))
    assert info.state.messages == 1
    message = await context.get_last_msg(events_stream(namespace), subject_for(CREATED, namespace))
    assert message.headers is not None and message.data is not None
    assert message.headers["Nats-Msg-Id"] == events[0].id
    assert message.headers[BATCH_HEADER] == "50"
    assert _ids(envelopes_in(message.data, message.headers)) == _ids(events)
    # Republished: JetStream drops the copy.
    assert await relay.publish_pending() == 1
    assert (await context.stream_info(events_stream(namespace))).state.messages == 1


async def _consume_until(consumer: EventConsumer, done: Callable[[], bool]) -> None:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    for _ in range(300):
        if done():
            break
        await asyncio.sleep(0.05)
    consumer.stop()
    await task


async def _notes(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list(await connection.scalars(sa.select(notes.c.text).order_by(notes.c.id)))


async def test_each_event_of_a_batch_is_applied_once_in_order(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    events = [_envelope(CREATED, f"p{i}") for i in range(40)]
    await _stage(engine, namespace, events[:25])
    await _stage(engine, namespace, events[25:])
    await OutboxRelay(engine, context).publish_pending()
    # The first batch again under another message id: a client's retry, which JetStream keeps.
    row = outbox_rows(events[:25], namespace)
    await context.publish(
        row.subjects[0], row.payloads[0], headers={"Nats-Msg-Id": "again", **json.loads(row.headers[0])}
    )

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        await session.execute(notes.insert().values(text=envelope.id))

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-batch-once",
        stream=events_stream(namespace),
        subjects=[subject_for(CREATED, namespace)],
        handler=handler,
        max_events_per_transaction=30,
    )
    await _consume_until(consumer, lambda: consumer.applied >= 40)
    assert await _notes(engine) == _ids(events)
    assert consumer.applied == 40


class _Gathering:
    """A handler that gathers a transaction's events and writes them in its finish, as one note."""

    def __init__(self, fail_with: str | None = None) -> None:
        self.fail_with = fail_with
        self.finished: list[int] = []

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        session.info.setdefault("gathered", []).append(envelope.id)

    async def finish(self, session: AsyncSession) -> None:
        gathered = session.info.pop("gathered", [])
        self.finished.append(len(gathered))
        if self.fail_with in gathered and len(gathered) > 1:
            raise ValueError("fails together, not alone")
        await session.execute(notes.insert().values(text=",".join(gathered)))


async def test_a_handler_may_gather_a_transactions_events_and_write_them_before_the_commit(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    events = [_envelope(CREATED, f"p{i}") for i in range(6)]
    await _stage(engine, namespace, events)
    await OutboxRelay(engine, context).publish_pending()
    handler = _Gathering(fail_with=events[4].id)
    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-batch-gather",
        stream=events_stream(namespace),
        subjects=[subject_for(CREATED, namespace)],
        handler=handler,
    )
    await _consume_until(consumer, lambda: consumer.applied >= 6)
    # The six went in one transaction, whose finish failed: rolled back, then applied one at a time, each
    # with its own finish; every event's effect is there once.
    assert handler.finished == [6, 1, 1, 1, 1, 1, 1]
    assert await _notes(engine) == _ids(events)


async def test_a_failing_event_of_a_batch_is_retried_and_dead_lettered_alone(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    events = [_envelope(CREATED, f"p{i}") for i in range(10)]
    poison, hopeless = events[3].id, events[6].id
    await _stage(engine, namespace, events)
    await OutboxRelay(engine, context).publish_pending()
    attempts: dict[str, int] = {}

    async def handler(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        attempts[envelope.id] = attempts.get(envelope.id, 0) + 1
        await session.execute(notes.insert().values(text=envelope.id))
        if envelope.id == poison:
            raise ValueError("poison")
        if envelope.id == hopeless:
            raise PermanentError("never")

    consumer = EventConsumer(
        context,
        session_factory(engine),
        durable="test-batch-poison",
        stream=events_stream(namespace),
        subjects=[subject_for(CREATED, namespace)],
        handler=handler,
        max_deliver=3,
        backoff_s=(0.05,),
    )
    await _consume_until(consumer, lambda: consumer.dead_lettered >= 2)
    assert await _notes(engine) == [e.id for e in events if e.id not in (poison, hopeless)]
    assert consumer.applied == 8 and consumer.dead_lettered == 2
    # The good events were applied once although the message came three times (the notes above). The
    # batch's transaction stopped at the poison event; then each event went alone: the poison one once per
    # delivery, the hopeless one once and never again (the inbox remembers it was dead-lettered).
    assert attempts[poison] == 4 and attempts[hopeless] == 1
    dead = []
    for sequence in (1, 2):
        message = await context.get_msg(dlq_stream(namespace), sequence)
        assert message.data is not None
        assert message.headers is not None and BATCH_HEADER not in message.headers
        dead.append(envelope_pb2.Envelope.FromString(message.data).id)
    assert sorted(dead) == sorted([poison, hopeless])
    info = await context.consumer_info(events_stream(namespace), "test-batch-poison")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_unpack_reads_an_event_of_a_batch(
    engine: AsyncEngine, js: tuple[JetStreamContext, str]
) -> None:
    context, namespace = js
    await _stage(engine, namespace, [_envelope(MERGED, "p1"), _envelope(MERGED, "p2")])
    await OutboxRelay(engine, context).publish_pending()
    message = await context.get_last_msg(events_stream(namespace), subject_for(MERGED, namespace))
    assert message.data is not None
    survivors = [
        unpack(e, events_pb2.PersonsMergedEvent).survivor_person_id
        for e in envelopes_in(message.data, message.headers)
    ]
    assert survivors == ["p1", "p2"]
