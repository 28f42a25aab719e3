"""What the gateway publishes: gateway.message_sent and gateway.message_failed, staged with the outcome they
announce. What it consumes is in consumers.py."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from omni.gateway.v1 import events_pb2
from omni_gateway.domain import MessageStatus
from omni_gateway.models import Message
from omni_gateway.wire import message_to_proto
from omni_kit.bus import Outbox

MESSAGE_SENT = "gateway.message_sent"
MESSAGE_FAILED = "gateway.message_failed"


async def stage_outcome(outbox: Outbox, session: AsyncSession, message: Message) -> None:
    """Stage the event announcing a final status, in the transaction that records it; nothing for QUEUED."""
    if message.status == MessageStatus.SENT:
        await outbox.add(
            session,
            events_pb2.MessageSentEvent(message=message_to_proto(message)),
            event_type=MESSAGE_SENT,
            person_id=str(message.person_id),
        )
    elif message.status == MessageStatus.FAILED:
        await outbox.add(
            session,
            events_pb2.MessageFailedEvent(message=message_to_proto(message)),
            event_type=MESSAGE_FAILED,
            person_id=str(message.person_id),
        )
