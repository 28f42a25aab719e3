"""What the gateway publishes: gateway.message_sent and gateway.message_failed, staged with the outcome they
announce, and gateway.message_receipt with each receipt recorded (receipts.py). What it consumes is in
consumers.py."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from omni.gateway.v1 import events_pb2, gateway_pb2
from omni_gateway.domain import MessageStatus
from omni_gateway.models import Message
from omni_gateway.providers.base import Receipt, ReceiptKind
from omni_gateway.wire import message_to_proto, timestamp
from omni_kit.bus import Outbox

MESSAGE_SENT = "gateway.message_sent"
MESSAGE_FAILED = "gateway.message_failed"
MESSAGE_RECEIPT = "gateway.message_receipt"

_RECEIPT_KINDS = {
    ReceiptKind.DELIVERED: events_pb2.RECEIPT_KIND_DELIVERED,
    ReceiptKind.FAILED: events_pb2.RECEIPT_KIND_FAILED,
    ReceiptKind.BOUNCED: events_pb2.RECEIPT_KIND_BOUNCED,
    ReceiptKind.OPENED: events_pb2.RECEIPT_KIND_OPENED,
    ReceiptKind.CLICKED: events_pb2.RECEIPT_KIND_CLICKED,
    ReceiptKind.COMPLAINED: events_pb2.RECEIPT_KIND_COMPLAINED,
    ReceiptKind.UNSUBSCRIBED: events_pb2.RECEIPT_KIND_UNSUBSCRIBED,
}


def announced(message: Message) -> gateway_pb2.Message:
    """The message as its events show it: without the recipient's address, which is personal data kept in
    the gateway's own row (GetMessage shows it) and not spread over the event log, where every consumer and
    the streams' retention would hold it; a provider's error naming the address names "<recipient>" instead."""
    shown = message_to_proto(message)
    if shown.recipient:
        shown.error = shown.error.replace(shown.recipient, "<recipient>")
        shown.ClearField("recipient")
    return shown


async def stage_outcome(outbox: Outbox, session: AsyncSession, message: Message) -> None:
    """Stage the event announcing a final status, in the transaction that records it; nothing for QUEUED."""
    if message.status == MessageStatus.SENT:
        await outbox.add(
            session,
            events_pb2.MessageSentEvent(message=announced(message)),
            event_type=MESSAGE_SENT,
            person_id=str(message.person_id),
        )
    elif message.status == MessageStatus.FAILED:
        await outbox.add(
            session,
            events_pb2.MessageFailedEvent(message=announced(message)),
            event_type=MESSAGE_FAILED,
            person_id=str(message.person_id),
        )


async def stage_receipt(
    outbox: Outbox, session: AsyncSession, message: Message, receipt: Receipt, *, detail: str, event_id: str
) -> None:
    """Stage the announcement of a receipt recorded for a message, in the transaction that records it."""
    await outbox.add(
        session,
        events_pb2.MessageReceiptEvent(
            message=announced(message),
            kind=_RECEIPT_KINDS[receipt.kind],
            provider=receipt.provider,
            provider_event_id=event_id,
            occur_time=timestamp(receipt.occurred_at),
            detail=detail,
            hard=receipt.address_invalid,
        ),
        event_type=MESSAGE_RECEIPT,
        person_id=str(message.person_id),
    )
