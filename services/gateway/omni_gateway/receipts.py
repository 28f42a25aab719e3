"""Receipts: what providers report after taking a message (delivered, failed, bounced, opened, clicked,
complained, unsubscribed), recorded once and announced. One mechanism for every provider: each is given this
sink at start (`ChannelProvider.start(receipts)`) and calls it with a `Receipt`; an inbound endpoint (a DSN
parser, a tracking pixel, an SMPP deliver_sm) calls the same sink.

For each receipt, in one transaction:
- it is stored once per (provider, provider_event_id) in `receipts`; a repeat (providers send duplicates)
  changes nothing and returns;
- its message is found by Omni's id (`message_id`) or the provider's id for it (`provider_message_id`, as
  recorded when the provider took it); a receipt for no known message is kept, and nothing else happens;
- the message is updated: DELIVERED (from SENT) on a delivery receipt, BOUNCED (from SENT or DELIVERED) on a
  bounce or a failed delivery; the first human open and click are stamped (opened_at, clicked_at), later
  ones and machine ones (image proxies, link scanners) are stored only; a receipt that overtook the
  recording of its send (the message still QUEUED) is kept, and recording the send SENT then makes it
  BOUNCED or DELIVERED as the receipt said (repository.record_outcome);
- the address is suppressed where the receipt says so (a hard bounce or invalid address: hard_bounce; a
  complaint: complaint; an unsubscription: unsubscribed), see suppression.py;
- `gateway.message_receipt` is staged in the outbox (events.stage_receipt), unless the receipt was a repeat,
  a later or machine open or click, or for a forgotten person's message (whose address is gone).

Caps: a provider's event id over 256 characters is kept as its SHA-256 (hex); the detail is cut to 1,000
characters, control characters other than tabs and line breaks replaced.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from omni_gateway.delivery import Transaction
from omni_gateway.domain import MessageStatus
from omni_gateway.events import stage_receipt
from omni_gateway.models import Message
from omni_gateway.providers.base import Receipt, ReceiptKind
from omni_gateway.repository import Repository
from omni_gateway.suppression import SuppressionReason, address_hash
from omni_kit.bus import Outbox
from omni_kit.errors import without_control_characters

log = logging.getLogger(__name__)

MAX_EVENT_ID = 256
MAX_DETAIL = 1000

_BOUNCES = (ReceiptKind.BOUNCED, ReceiptKind.FAILED)
_ENGAGEMENT = (ReceiptKind.OPENED, ReceiptKind.CLICKED)


class ReceiptRecorder:
    """The ReceiptSink every provider is given: records, deduplicates, suppresses and announces receipts."""

    def __init__(self, *, transaction: Transaction, repository: Repository, outbox: Outbox) -> None:
        self._transaction = transaction
        self._repository = repository
        self._outbox = outbox

    async def __call__(self, receipt: Receipt) -> None:
        """Record one receipt (see the module's doc); a repeat changes nothing."""
        await self.record(receipt)

    async def record(self, receipt: Receipt) -> Message | None:
        """Record one receipt; return its message as it stands after it (None: a repeat, or no message)."""
        event_id = receipt.provider_event_id
        if len(event_id) > MAX_EVENT_ID:
            event_id = hashlib.sha256(event_id.encode()).hexdigest()
        detail = without_control_characters(receipt.detail[:MAX_DETAIL])
        async with self._transaction() as session:
            message = await self._repository.find_message(
                session,
                message_id=receipt.message_id,
                provider=receipt.provider,
                provider_message_id=receipt.provider_message_id,
            )
            fresh = await self._repository.insert_receipt(
                session,
                {
                    "provider": receipt.provider,
                    "provider_event_id": event_id,
                    "message_id": message.id if message is not None else None,
                    "kind": receipt.kind.value,
                    "occurred_at": receipt.occurred_at,
                    "detail": detail,
                    "machine": receipt.machine,
                },
            )
            if not fresh:
                return None
            if message is None:
                log.warning(
                    "receipt %s/%s (%s) names no known message", receipt.provider, event_id, receipt.kind
                )
                return None
            announce = self._apply(message, receipt)
            if message.recipient:  # empty once the person is forgotten
                reason = _suppression_reason(receipt)
                if reason is not None:
                    await self._repository.suppress(
                        session,
                        channel=message.channel.value,
                        key=address_hash(message.channel, message.recipient),
                        reason=reason.value,
                        provider=receipt.provider,
                        message_id=message.id,
                    )
            else:
                announce = False
            await session.flush()
            if announce:
                await stage_receipt(self._outbox, session, message, receipt, detail=detail, event_id=event_id)
            return message

    def _apply(self, message: Message, receipt: Receipt) -> bool:
        """Update the message for the receipt; whether the receipt is announced."""
        now = _aware(receipt.occurred_at)
        kind = receipt.kind
        if kind == ReceiptKind.DELIVERED:
            if message.status == MessageStatus.SENT:
                message.status = MessageStatus.DELIVERED
                message.update_time = now
            if message.delivered_at is None:
                message.delivered_at = now
            return True
        if kind in _BOUNCES:
            if message.status in (MessageStatus.SENT, MessageStatus.DELIVERED):
                message.status = MessageStatus.BOUNCED
                message.update_time = now
            return True
        if kind in _ENGAGEMENT:
            if receipt.machine:
                return False
            if kind == ReceiptKind.OPENED:
                first, message.opened_at = message.opened_at is None, message.opened_at or now
            else:
                first, message.clicked_at = message.clicked_at is None, message.clicked_at or now
            return first
        return True  # complained, unsubscribed


def _suppression_reason(receipt: Receipt) -> SuppressionReason | None:
    if receipt.kind in _BOUNCES and receipt.address_invalid:
        return SuppressionReason.HARD_BOUNCE
    if receipt.kind == ReceiptKind.COMPLAINED:
        return SuppressionReason.COMPLAINT
    if receipt.kind == ReceiptKind.UNSUBSCRIBED:
        return SuppressionReason.UNSUBSCRIBED
    return None


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a receipt's occurred_at must be timezone-aware")
    return value
