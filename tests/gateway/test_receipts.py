"""Receipts, as providers report them through the sink they are given at start: recorded once per provider event
id, the message's status moved, opens and clicks announced once, addresses suppressed by hard bounces and
unsubscriptions (transactional messages pass an unsubscription, never a hard bounce), and profile recording
the opens on the person's timeline, so last_email_open_at comes from a real open."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa
from nats.js import JetStreamContext

from omni.gateway.v1 import events_pb2, gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import profile_pb2
from omni_gateway.providers.base import Receipt, ReceiptKind
from omni_gateway.receipts import ReceiptRecorder
from omni_gateway.repository import Repository
from omni_kit.bus import make_envelope, unpack
from omni_kit.embedded import SmtpSink
from omni_kit.ids import new_id

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    create_cart_template,
    create_person,
    publish,
    send_request,
    set_consent,
    unique,
    until,
)

TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL


def _sink(gateway: Gateway) -> ReceiptRecorder:
    """The receipt sink the gateway hands its providers (the same objects: its transactions and outbox)."""
    return ReceiptRecorder(
        transaction=gateway.runtime.transaction, repository=Repository(), outbox=gateway.runtime.outbox
    )


def _receipt(message: gateway_pb2.Message, kind: ReceiptKind, **fields: object) -> Receipt:
    values: dict[str, object] = {
        "provider": "smtp",
        "kind": kind,
        "provider_event_id": unique("evt-"),
        "occurred_at": datetime.now(UTC),
        "provider_message_id": message.provider_message_id,
        **fields,
    }
    return Receipt(**values)  # type: ignore[arg-type]


def _receipts_announced(events: EventLog, message_id: str) -> list[events_pb2.MessageReceiptEvent]:
    return [
        unpack(e, events_pb2.MessageReceiptEvent)
        for e in events.envelopes
        if e.type == "gateway.message_receipt"
        and unpack(e, events_pb2.MessageReceiptEvent).message.id == message_id
    ]


async def _sent(gateway: Gateway, neighbours: Neighbours, address: str | None = None) -> gateway_pb2.Message:
    person_id = await create_person(neighbours, address or f"{unique('rcpt-')}@example.com", consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    message = (await gateway.stub.SendMessage(request)).message
    assert message.status == gateway_pb2.MESSAGE_STATUS_SENT
    return message


async def test_a_delivery_receipt_marks_the_message_delivered_once(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, smtp_sink: SmtpSink
) -> None:
    message = await _sent(gateway, neighbours)
    assert message.provider == "smtp" and message.provider_message_id
    delivered = _receipt(message, ReceiptKind.DELIVERED)

    await _sink(gateway)(delivered)
    await _sink(gateway)(delivered)  # the provider says it again

    found = (await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))).message
    assert found.status == gateway_pb2.MESSAGE_STATUS_DELIVERED
    await until(lambda: bool(_receipts_announced(events, message.id)))
    await asyncio.sleep(0.3)
    [announced] = _receipts_announced(events, message.id)
    assert announced.kind == events_pb2.RECEIPT_KIND_DELIVERED
    assert announced.provider == "smtp"
    assert announced.message.status == gateway_pb2.MESSAGE_STATUS_DELIVERED
    async with gateway.database.connect() as connection:
        stored = await connection.scalar(
            sa.text("SELECT count(*) FROM receipts WHERE message_id = CAST(:id AS uuid)"), {"id": message.id}
        )
    assert stored == 1


async def test_opens_and_clicks_are_announced_once_and_machine_opens_not_at_all(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, smtp_sink: SmtpSink
) -> None:
    message = await _sent(gateway, neighbours)
    sink = _sink(gateway)
    await sink(_receipt(message, ReceiptKind.OPENED, machine=True))  # an image proxy, at once
    await sink(_receipt(message, ReceiptKind.OPENED))
    await sink(_receipt(message, ReceiptKind.OPENED))
    await sink(_receipt(message, ReceiptKind.CLICKED, detail="https://shop.example/cart"))
    await sink(_receipt(message, ReceiptKind.CLICKED, detail="https://shop.example/cart"))

    await until(lambda: len(_receipts_announced(events, message.id)) >= 2)
    await asyncio.sleep(0.3)
    kinds = sorted(r.kind for r in _receipts_announced(events, message.id))
    assert kinds == [events_pb2.RECEIPT_KIND_OPENED, events_pb2.RECEIPT_KIND_CLICKED]
    async with gateway.database.connect() as connection:
        stored = await connection.scalar(
            sa.text("SELECT count(*) FROM receipts WHERE message_id = CAST(:id AS uuid)"), {"id": message.id}
        )
    assert stored == 5, "every receipt is kept; only the first human open and click are announced"


async def test_profile_records_a_real_open_and_last_email_open_at_follows_it(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    message = await _sent(gateway, neighbours)
    opened_at = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)

    await _sink(gateway)(_receipt(message, ReceiptKind.OPENED, occurred_at=opened_at))

    async with asyncio.timeout(10):
        while True:
            profile = (
                await neighbours.profile.GetProfile(
                    profile_pb2.GetProfileRequest(person_id=message.person_id)
                )
            ).profile
            traits = dict(profile.computed_traits)
            if "last_email_open_at" in traits:
                break
            await asyncio.sleep(0.1)
    assert traits["last_email_open_at"] == "2026-11-30T08:15:00Z"


async def test_a_hard_bounce_suppresses_the_address_for_every_message(
    gateway: Gateway, neighbours: Neighbours, events: EventLog, smtp_sink: SmtpSink
) -> None:
    address = f"{unique('bounced-')}@example.com"
    message = await _sent(gateway, neighbours, address)

    await _sink(gateway)(
        _receipt(message, ReceiptKind.BOUNCED, address_invalid=True, detail="5.1.1 user unknown")
    )

    found = (await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))).message
    assert found.status == gateway_pb2.MESSAGE_STATUS_BOUNCED
    await until(lambda: bool(_receipts_announced(events, message.id)))
    assert _receipts_announced(events, message.id)[0].hard
    # The same address again, for another message: marketing and transactional alike stop there.
    template_id = await create_cart_template(gateway)
    marketing = (await gateway.stub.SendMessage(send_request(message.person_id, template_id))).message
    await set_consent(neighbours, message.person_id, profile_pb2.CONSENT_STATE_GRANTED, purpose=TRANSACTIONAL)
    transactional = (
        await gateway.stub.SendMessage(send_request(message.person_id, template_id, purpose=TRANSACTIONAL))
    ).message
    for refused in (marketing, transactional):
        assert refused.status == gateway_pb2.MESSAGE_STATUS_FAILED
        assert refused.error == "address suppressed: hard_bounce"
    assert sum(1 for m in smtp_sink.messages() if m["To"] == address) == 1


async def test_an_unsubscription_stops_marketing_but_not_transactional_messages(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    address = f"{unique('unsub-')}@example.com"
    message = await _sent(gateway, neighbours, address)

    await _sink(gateway)(_receipt(message, ReceiptKind.UNSUBSCRIBED))

    template_id = await create_cart_template(gateway)
    marketing = (await gateway.stub.SendMessage(send_request(message.person_id, template_id))).message
    assert marketing.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert marketing.error == "address suppressed: unsubscribed"
    transactional = (
        await gateway.stub.SendMessage(send_request(message.person_id, template_id, purpose=TRANSACTIONAL))
    ).message
    assert transactional.status == gateway_pb2.MESSAGE_STATUS_SENT


async def test_a_receipt_for_no_known_message_is_kept_and_changes_nothing(
    gateway: Gateway, events: EventLog
) -> None:
    orphan = Receipt(
        provider="smtp",
        kind=ReceiptKind.DELIVERED,
        provider_event_id=unique("orphan-"),
        occurred_at=datetime.now(UTC),
        provider_message_id="<nobody@nowhere>",
        detail="x\x00y" + "z" * 5000,
    )
    await _sink(gateway)(orphan)
    async with gateway.database.connect() as connection:
        row = (
            await connection.execute(
                sa.text("SELECT message_id, length(detail) AS n FROM receipts WHERE provider_event_id = :e"),
                {"e": orphan.provider_event_id},
            )
        ).one()
    assert row.message_id is None and row.n == 1000
    assert not [e for e in events.envelopes if e.type == "gateway.message_receipt"]


async def test_forgetting_a_person_keeps_a_delivered_message_delivered_without_an_error(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, js: JetStreamContext
) -> None:
    message = await _sent(gateway, neighbours)
    await _sink(gateway)(_receipt(message, ReceiptKind.DELIVERED))
    applied_before = gateway.runtime.consumers[0].applied
    forget = make_envelope(
        identity_events.PersonForgottenEvent(
            person_id=message.person_id, forgotten_person_ids=[message.person_id], erasure_id=str(new_id())
        ),
        event_type="identity.person_forgotten",
        producer="identity",
        person_id=message.person_id,
    )

    await publish(js, neighbours.namespace, forget)
    await until(lambda: gateway.runtime.consumers[0].applied >= applied_before + 1)

    found = (await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))).message
    assert found.status == gateway_pb2.MESSAGE_STATUS_DELIVERED
    assert (found.error, found.recipient) == ("", "")
