"""SendMessage over gRPC, end to end: identity and profile for real, PostgreSQL, NATS and the SMTP sink."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa

from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.embedded import SmtpSink
from omni_kit.errors import status_details

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    add_to_cart,
    counts,
    create_cart_template,
    create_person,
    send_request,
    unique,
)


async def _emails_to(sink: SmtpSink, address: str) -> int:
    return sum(1 for m in await asyncio.to_thread(sink.messages) if m["To"] == address)


async def test_the_email_reaches_the_person_and_names_the_product_in_the_cart(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('ada-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    await add_to_cart(
        neighbours, person_id, product_id="sku-42", name="Trail Running Shoes", quantity=2, price_minor=8999
    )
    template_id = await create_cart_template(gateway)

    response = await gateway.stub.SendMessage(send_request(person_id, template_id, coupon="BACK10"))

    message = response.message
    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message.error
    assert message.recipient == email
    assert message.person_id == person_id
    assert message.attempt_count == 1
    assert not message.error
    assert not message.HasField("next_attempt_time")
    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    assert received["Subject"] == "Hi, your cart is waiting"
    assert received["X-Omni-Message-Id"] == message.id
    assert received["Message-ID"] == f"<{message.id}@localhost>"
    assert received.get_content_type() == "multipart/alternative"
    text = received.get_body(preferencelist=("plain",))
    assert text is not None
    assert "2 x Trail Running Shoes (89.99 EUR)" in text.get_content()
    assert "Code: BACK10" in text.get_content()
    html = received.get_body(preferencelist=("html",))
    assert html is not None and "<li>Trail Running Shoes</li>" in html.get_content()

    stored = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))
    assert stored.message == message


async def test_the_same_request_twice_sends_once_and_answers_the_same_message(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('twice-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    template_id = await create_cart_template(gateway)
    request = send_request(person_id, template_id, coupon="X")

    first = await gateway.stub.SendMessage(request)
    second = await gateway.stub.SendMessage(request)

    assert first.message.status == gateway_pb2.MESSAGE_STATUS_SENT
    assert second.message == first.message
    await smtp_sink.wait_for(lambda m: m["To"] == email)
    await asyncio.sleep(0.3)
    assert await _emails_to(smtp_sink, email) == 1
    async with gateway.database.connect() as connection:
        rows = await connection.scalar(
            sa.text("SELECT count(*) FROM messages WHERE request_id = :r"), {"r": request.request_id}
        )
    assert rows == 1


async def test_concurrent_requests_with_one_key_send_once(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('race-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    template_id = await create_cart_template(gateway)
    request = send_request(person_id, template_id)

    answers = await asyncio.gather(*(gateway.stub.SendMessage(request) for _ in range(5)))

    assert len({a.message.id for a in answers}) == 1
    await smtp_sink.wait_for(lambda m: m["To"] == email)
    await asyncio.sleep(0.3)
    assert await _emails_to(smtp_sink, email) == 1


async def test_the_same_key_with_other_content_is_refused_and_changes_nothing(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    person_id = await create_person(neighbours, f"{unique('reuse-')}@example.com", consent=True)
    template_id = await create_cart_template(gateway)
    first = await gateway.stub.SendMessage(
        send_request(person_id, template_id, request_id=unique(), coupon="A")
    )
    before = await counts(gateway.database)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.stub.SendMessage(
            send_request(person_id, template_id, request_id=first.message.request_id, coupon="B")
        )

    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None
    assert details.error_info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert details.error_info.metadata["message_id"] == first.message.id
    assert await counts(gateway.database) == before


async def test_a_sent_message_is_published_on_jetstream(
    gateway: Gateway, neighbours: Neighbours, events: EventLog
) -> None:
    person_id = await create_person(neighbours, f"{unique('pub-')}@example.com", consent=True)
    template_id = await create_cart_template(gateway)

    sent = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message

    published = await events.wait_for_message("gateway.message_sent", lambda m: m.id == sent.id)
    # The event is the message without the address it went to: personal data stays in the gateway.
    assert sent.recipient and not published.recipient
    shown = type(sent)()
    shown.CopyFrom(sent)
    shown.ClearField("recipient")
    assert published == shown
    envelope = next(e for e in events.envelopes if e.type == "gateway.message_sent")
    assert envelope.producer == "gateway"
    assert envelope.person_id == person_id


async def test_a_person_without_an_email_address_fails_and_the_failure_is_published(
    gateway: Gateway, neighbours: Neighbours, events: EventLog
) -> None:
    person_id = await create_person(neighbours, None)
    template_id = await create_cart_template(gateway)

    message = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message

    assert message.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert message.error == "no email address"
    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.id == message.id)
    assert failed.error == "no email address"


async def test_an_unknown_person_fails(gateway: Gateway) -> None:
    template_id = await create_cart_template(gateway)
    person_id = "0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b"

    message = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message

    assert message.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert message.error == "person not found"


async def test_a_person_without_a_profile_gets_a_transactional_email_with_an_empty_cart(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    # Without a profile there is no consent either: only a transactional message goes out.
    email = f"{unique('noprofile-')}@example.com"
    person_id = await create_person(neighbours, email)
    template_id = await create_cart_template(gateway)

    message = (
        await gateway.stub.SendMessage(
            send_request(person_id, template_id, purpose=profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL)
        )
    ).message

    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT, message.error
    received = await smtp_sink.wait_for(lambda m: m["To"] == email)
    text = received.get_body(preferencelist=("plain",))
    assert text is not None and text.get_content().strip() == "You left:"


async def test_the_send_appears_on_the_persons_timeline(gateway: Gateway, neighbours: Neighbours) -> None:
    person_id = await create_person(neighbours, f"{unique('timeline-')}@example.com", consent=True)
    template_id = await create_cart_template(gateway)
    message = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message

    # Profile knows the person (their consent); the send reaches the timeline once its event is consumed.
    async with asyncio.timeout(10):
        while True:
            timeline = await neighbours.profile.ListTimeline(
                profile_pb2.ListTimelineRequest(person_id=person_id, page_size=10)
            )
            if any(e.type == "message_sent" for e in timeline.events):
                break
            await asyncio.sleep(0.1)
    sent = next(e for e in timeline.events if e.type == "message_sent")
    assert sent.properties["message_id"] == message.id
