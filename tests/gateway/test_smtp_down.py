"""SMTP trouble: a server down keeps the message queued with the failure until it is back; a slow server
does not get the message cut in half when the caller gives up waiting."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.js import JetStreamContext

from omni.gateway.v1 import gateway_pb2
from omni_kit.embedded import SmtpSink, free_port

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    StartGateway,
    as_announced,
    create_cart_template,
    create_person,
    publish,
    send_request,
    send_requested,
    unique,
    until,
)


async def _queued(gateway: Gateway, neighbours: Neighbours, email: str) -> gateway_pb2.SendMessageRequest:
    person_id = await create_person(neighbours, email, consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    message = (await gateway.stub.SendMessage(request)).message
    assert message.status == gateway_pb2.MESSAGE_STATUS_QUEUED
    assert message.error.startswith("smtp: cannot reach the server")
    assert message.attempt_count == 1
    assert message.recipient == email
    assert message.HasField("next_attempt_time")
    return request


async def _status_becomes(
    gateway: Gateway, message_id: str, status: gateway_pb2.MessageStatus.ValueType
) -> gateway_pb2.Message:
    async with asyncio.timeout(10):
        while True:
            found = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message_id))
            if found.message.status == status:
                return found.message
            await asyncio.sleep(0.05)


async def test_a_queued_message_is_sent_when_the_same_request_comes_again(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    down_port: int,
    late_sink: SmtpSink,
    events: EventLog,
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=600)
    email = f"{unique('down-')}@example.com"
    request = await _queued(gateway, neighbours, email)
    queued = (await gateway.stub.SendMessage(request)).message  # still down: tried again, still queued
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED
    assert queued.attempt_count == 2
    assert not events.messages("gateway.message_sent")
    assert not events.messages("gateway.message_failed")

    late_sink.start()
    sent = (await gateway.stub.SendMessage(request)).message

    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert sent.id == queued.id
    assert sent.attempt_count == 3
    assert sent.error == ""
    await late_sink.wait_for(lambda m: m["To"] == email)
    published = await events.wait_for_message("gateway.message_sent", lambda m: m.id == sent.id)
    assert published.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert len(late_sink.messages()) == 1


async def test_the_retry_loop_sends_a_queued_message_once_the_server_is_back(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int, late_sink: SmtpSink
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=0.3)
    email = f"{unique('loop-')}@example.com"
    request = await _queued(gateway, neighbours, email)
    queued = (await gateway.stub.SendMessage(request)).message

    late_sink.start()

    sent = await _status_becomes(gateway, queued.id, gateway_pb2.MESSAGE_STATUS_SENT)
    assert sent.attempt_count >= 2
    await late_sink.wait_for(lambda m: m["To"] == email)
    await asyncio.sleep(0.5)
    assert len(late_sink.messages()) == 1


async def _job_due(gateway: Gateway, message_id: str) -> object:
    """When the message's scheduled attempt is due (None: no job)."""
    async with gateway.database.connect() as connection:
        return await connection.scalar(
            sa.text(
                "SELECT due_at FROM scheduled_jobs WHERE kind = 'gateway.delivery_attempt' AND key = :id"
            ),
            {"id": message_id},
        )


async def test_the_next_attempt_is_a_scheduled_job_that_ends_with_the_message(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int, late_sink: SmtpSink
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=600)
    email = f"{unique('job-')}@example.com"
    request = await _queued(gateway, neighbours, email)
    async with gateway.database.connect() as connection:
        message_id, next_attempt_at = (
            await connection.execute(
                sa.text("SELECT CAST(id AS text), next_attempt_at FROM messages WHERE request_id = :r"),
                {"r": request.request_id},
            )
        ).one()
    assert await _job_due(gateway, message_id) == next_attempt_at

    late_sink.start()
    sent = (await gateway.stub.SendMessage(request)).message
    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert await _job_due(gateway, message_id) is None, "a message sent has no attempt left to make"


async def test_a_message_fails_after_its_last_attempt_and_the_failure_is_published(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int, events: EventLog
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=0.1, send_max_attempts=3)
    request = await _queued(gateway, neighbours, f"{unique('never-')}@example.com")

    failed = await events.wait_for_message(
        "gateway.message_failed", lambda m: m.request_id == request.request_id
    )

    assert failed.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert failed.attempt_count == 3
    assert failed.error.startswith("gave up after 3 attempts: smtp: cannot reach the server")
    assert not failed.HasField("next_attempt_time")
    stored = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=failed.id))
    assert as_announced(stored.message) == failed


async def test_a_send_request_consumed_while_the_server_is_down_is_kept_and_sent_later(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    down_port: int,
    late_sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=0.3)
    email = f"{unique('consumed-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    template_id = await create_cart_template(gateway)
    request_id = unique("journey-step-")

    await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    # The event is taken (acked) once the message is queued; the job pool attempts it, and owns the retries.
    await until(lambda: gateway.runtime.consumers[0].applied >= 1)
    async with asyncio.timeout(10):
        while True:
            async with gateway.database.connect() as connection:
                row = (
                    await connection.execute(
                        sa.text("SELECT status, error FROM messages WHERE request_id = :r"), {"r": request_id}
                    )
                ).one()
            if row.error:
                break
            assert row.status == "queued"
            await asyncio.sleep(0.05)
    assert row.status == "queued"
    assert row.error.startswith("smtp: cannot reach the server")

    late_sink.start()

    sent = await events.wait_for_message("gateway.message_sent", lambda m: m.request_id == request_id)
    assert sent.recipient == ""  # the event leaves the address out; the sink shows where it went
    await late_sink.wait_for(lambda m: m["To"] == email)


class _SlowServer:
    """Takes a second to accept each message, and remembers the recipients of what it was given and accepted."""

    def __init__(self) -> None:
        self.receiving: list[str] = []
        self.accepted: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.receiving.extend(envelope.rcpt_tos)
        await asyncio.sleep(1.0)
        self.accepted.extend(envelope.rcpt_tos)
        return "250 OK"


async def test_a_caller_that_stops_waiting_does_not_cut_the_attempt_short(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int
) -> None:
    slow = _SlowServer()
    controller = Controller(slow, hostname="127.0.0.1", port=down_port, server_hostname="slow")
    controller.start()
    try:
        gateway = await start_gateway(smtp_port=down_port)
        email = f"{unique('slow-')}@example.com"
        person_id = await create_person(neighbours, email, consent=True)
        request = send_request(person_id, await create_cart_template(gateway))

        # The caller gives up once the attempt is under way (a fixed short deadline could also expire before
        # the request was recorded, on a loaded machine, and then there is rightly no attempt to finish).
        call = gateway.stub.SendMessage(request)
        await until(lambda: email in slow.receiving)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        await until(lambda: email in slow.accepted)
        sent = await _status_becomes(gateway, (await gateway.stub.SendMessage(request)).message.id, _SENT)
        assert sent.attempt_count == 1
        assert slow.accepted.count(email) == 1
    finally:
        controller.stop()


_SENT = gateway_pb2.MESSAGE_STATUS_SENT


class _RefusingWithANul:
    """A server whose refusal quotes a NUL (a broken or hostile server: its reply is not ours to trust)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        return "550 5.1.1 no\x00such user"


async def test_a_refusal_quoting_a_nul_is_recorded_readable(
    start_gateway: StartGateway, neighbours: Neighbours, events: EventLog
) -> None:
    port = free_port("127.0.0.1")
    controller = Controller(_RefusingWithANul(), hostname="127.0.0.1", port=port, server_hostname="odd")
    controller.start()
    try:
        gateway = await start_gateway(smtp_port=port)
        person_id = await create_person(neighbours, f"{unique('nul-')}@example.com", consent=True)
        request = send_request(person_id, await create_cart_template(gateway))
        message = (await gateway.stub.SendMessage(request)).message
    finally:
        controller.stop()
    assert message.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert message.error.startswith("smtp: recipient refused") and "\x00" not in message.error
    assert "no\ufffdsuch user" in message.error
    await events.wait_for_message("gateway.message_failed", lambda m: m.id == message.id)
