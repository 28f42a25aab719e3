"""decisioning.send_requested consumed from JetStream: one email per request id, in the journey's trace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni_kit.embedded import EmbeddedNats, SmtpSink

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    add_to_cart,
    counts,
    create_cart_template,
    create_person,
    publish,
    send_requested,
    unique,
    until,
)

tracer = trace.get_tracer("tests.gateway")


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished from now on; shares the SDK provider if another test module installed one."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


async def test_a_send_request_is_sent_once_however_often_it_arrives_and_continues_the_trace(
    gateway: Gateway,
    neighbours: Neighbours,
    smtp_sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
    spans: InMemorySpanExporter,
) -> None:
    email = f"{unique('journey-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    await add_to_cart(
        neighbours, person_id, product_id="sku-7", name="Rain Jacket", quantity=1, price_minor=12900
    )
    template_id = await create_cart_template(gateway)
    request_id = unique("journey-step-")
    applied_before = gateway.runtime.consumers[0].applied

    with tracer.start_as_current_span("journey step") as journey_span:
        first = send_requested(person_id, template_id, request_id)
        await publish(js, neighbours.namespace, first)
        await publish(js, neighbours.namespace, first)  # the same event again: JetStream drops it
        # The same request in a new event, as after a decisioning retry: the request id keeps it to one send.
        await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    text = received.get_body(preferencelist=("plain",))
    assert text is not None and "1 x Rain Jacket (129.00 EUR)" in text.get_content()
    sent = await events.wait_for_message("gateway.message_sent", lambda m: m.request_id == request_id)
    assert sent.journey_id == "journey-abandoned-cart"
    assert sent.recipient == ""  # the event leaves the address out; the sink shows where it went

    await until(lambda: gateway.runtime.consumers[0].applied >= applied_before + 2)
    await asyncio.sleep(0.2)
    assert sum(1 for m in await asyncio.to_thread(smtp_sink.messages) if m["To"] == email) == 1
    async with gateway.database.connect() as connection:
        assert (
            await connection.scalar(
                sa.text("SELECT count(*) FROM messages WHERE request_id = :r"), {"r": request_id}
            )
            == 1
        )

    trace_id = journey_span.get_span_context().trace_id
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    smtp = [s for s in finished if s.name == "smtp send"]
    assert len(smtp) == 1
    assert smtp[0].attributes is not None and smtp[0].attributes["omni.message_id"] == sent.id
    consumer = next(s for s in finished if s.name.endswith("process decisioning.send_requested"))
    assert _descends_from(smtp[0], consumer, finished)


def _descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_a_request_for_an_unknown_template_is_recorded_failed_and_announced(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, js: JetStreamContext
) -> None:
    person_id = await create_person(neighbours, f"{unique('nowhere-')}@example.com")
    request_id = unique("journey-step-")

    await publish(js, neighbours.namespace, send_requested(person_id, unique("gone-"), request_id))

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.request_id == request_id)
    assert "not found" in failed.error
    assert failed.attempt_count == 0


async def test_a_request_for_a_channel_not_delivered_is_recorded_failed(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, js: JetStreamContext
) -> None:
    person_id = await create_person(neighbours, f"{unique('sms-')}@example.com")
    template_id = await create_cart_template(gateway)
    request_id = unique("journey-step-")

    await publish(
        js, neighbours.namespace, send_requested(person_id, template_id, request_id, common_pb2.CHANNEL_SMS)
    )

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.request_id == request_id)
    assert failed.channel == common_pb2.CHANNEL_SMS
    assert "channel" in failed.error


async def _dead_letters(nats_server: EmbeddedNats, namespace: str) -> tuple[nats.NATS, list[Msg]]:
    client = await nats.connect(nats_server.url)
    letters: list[Msg] = []

    async def received(message: Msg) -> None:
        letters.append(message)

    await client.subscribe(f"{namespace}.dlq.gateway-send-requests", cb=received)
    await client.flush()
    return client, letters


# A NUL reached PostgreSQL, which cannot store it: the event was retried for some twenty seconds before it was
# dead-lettered, rather than at once.
@pytest.mark.parametrize("request_id", ["", "journey-step\x00"], ids=["missing", "nul"])
async def test_a_request_without_a_usable_request_id_is_dead_lettered_and_nothing_is_written(
    gateway: Gateway, neighbours: Neighbours, nats_server: EmbeddedNats, js: JetStreamContext, request_id: str
) -> None:
    person_id = await create_person(neighbours, f"{unique('nokey-')}@example.com")
    template_id = await create_cart_template(gateway)
    before = await counts(gateway.database)
    client, letters = await _dead_letters(nats_server, neighbours.namespace)
    try:
        envelope = send_requested(person_id, template_id, request_id=request_id)
        await publish(js, neighbours.namespace, envelope)
        await until(lambda: len(letters) == 1)
    finally:
        await client.drain()

    assert envelope_pb2.Envelope.FromString(letters[0].data).id == envelope.id
    assert letters[0].headers is not None and "request_id" in letters[0].headers["Omni-Error"]
    assert await counts(gateway.database) == before


async def test_a_request_id_reused_for_other_content_is_dead_lettered(
    gateway: Gateway,
    neighbours: Neighbours,
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    events: EventLog,
) -> None:
    person_id = await create_person(neighbours, f"{unique('clash-')}@example.com", consent=True)
    template_id = await create_cart_template(gateway)
    other_template_id = await create_cart_template(gateway)
    request_id = unique("journey-step-")
    await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))
    await events.wait_for_message("gateway.message_sent", lambda m: m.request_id == request_id)
    client, letters = await _dead_letters(nats_server, neighbours.namespace)
    try:
        await publish(js, neighbours.namespace, send_requested(person_id, other_template_id, request_id))
        await until(lambda: len(letters) == 1)
    finally:
        await client.drain()

    assert letters[0].headers is not None
    assert "was used for a different message" in letters[0].headers["Omni-Error"]


async def test_the_pool_asks_identity_and_profile_once_for_a_batch_of_journey_sends(
    gateway: Gateway,
    neighbours: Neighbours,
    smtp_sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
    spans: InMemorySpanExporter,
) -> None:
    template_id = await create_cart_template(gateway)
    persons = [
        await create_person(neighbours, f"{unique('batched-')}@example.com", consent=True) for _ in range(5)
    ]
    requests = [unique("batched-step-") for _ in persons]
    spans.clear()
    for person_id, request_id in zip(persons, requests, strict=True):
        await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    for request_id in requests:

        def sent(message: gateway_pb2.Message, request_id: str = request_id) -> bool:
            return message.request_id == request_id

        await events.wait_for_message("gateway.message_sent", sent)

    finished = spans.get_finished_spans()
    delivers = [s for s in finished if s.name == "gateway deliver"]
    assert len(delivers) == len(requests)
    assert all(s.attributes and s.attributes["omni.contacts_batched"] for s in delivers)
    assert all(s.attributes and s.attributes["omni.profile_batched"] for s in delivers)
    batches = [s for s in finished if s.name == "gateway contacts"]
    assert 1 <= len(batches) <= len(requests)
    counted = [dict(s.attributes or {}).get("omni.message_count") for s in batches]
    assert sum(n for n in counted if isinstance(n, int)) == len(requests)
