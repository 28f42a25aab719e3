"""What the analytical copy of outcomes consumes: the gateway's sends and receipts, profile's tracked events
and decisioning's own decisions (offer impressions), through one durable consumer of its own
(`decisioning-outcomes`), apart from the read models' so a report's backlog never delays a journey."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from omni.decisioning.v1 import events_pb2 as decisioning_events
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.profile.v1 import events_pb2 as profile_events
from omni_decisioning.experiments.outcomes import Outcomes
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid
from omni_kit.lineage.table import LineageTable

log = logging.getLogger(__name__)

MESSAGE_SENT = "gateway.message_sent"
MESSAGE_RECEIPT = "gateway.message_receipt"
EVENT_TRACKED = "profile.event_tracked"
DECISION_MADE = "decisioning.decision_made"
OUTCOME_EVENTS = (MESSAGE_SENT, MESSAGE_RECEIPT, EVENT_TRACKED, DECISION_MADE)

_RECEIPT_COLUMNS = {
    gateway_events.RECEIPT_KIND_DELIVERED: "delivered",
    gateway_events.RECEIPT_KIND_OPENED: "opened",
    gateway_events.RECEIPT_KIND_CLICKED: "clicked",
}


def _time(timestamp: Timestamp, fallback: datetime) -> datetime:
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return fallback
    return timestamp.ToDatetime(tzinfo=UTC)


class OutcomeHandlers:
    """Applies consumed events to the analytical copy; each call runs in the consumer's transaction, once per
    event id."""

    def __init__(self, outcomes: Outcomes, lineage: LineageTable) -> None:
        self._outcomes = outcomes
        self._lineage = lineage

    async def _person(self, session: AsyncSession, raw: str) -> uuid.UUID | None:
        """The live person an id leads to; None for a malformed or forgotten one (its outcomes are dropped:
        this consumer may run behind the erasure)."""
        person_id = parse_uuid(raw)
        if person_id is None:
            return None
        where = (await self._lineage.whereabouts(session, [person_id]))[person_id]
        return None if where.forgotten else where.person_id

    async def handle(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Dispatch one envelope by its type; unknown types are ignored."""
        occurred_at = _time(envelope.occurred_at, datetime.now(UTC))
        if envelope.type == MESSAGE_SENT:
            message = unpack(envelope, gateway_events.MessageSentEvent).message
            person_id = await self._person(session, message.person_id)
            if person_id is None or not message.request_id:
                return
            await self._outcomes.message_sent(
                session,
                request_id=message.request_id,
                person_id=person_id,
                channel=int(message.channel),
                journey_id=message.journey_id,
                template_id=message.template_id,
                at=_time(message.update_time, occurred_at),
            )
        elif envelope.type == MESSAGE_RECEIPT:
            receipt = unpack(envelope, gateway_events.MessageReceiptEvent)
            column = _RECEIPT_COLUMNS.get(receipt.kind)
            if column is not None and receipt.message.request_id:
                await self._outcomes.receipt(
                    session,
                    request_id=receipt.message.request_id,
                    column=column,
                    at=_time(receipt.occur_time, occurred_at),
                )
        elif envelope.type == EVENT_TRACKED:
            event = unpack(envelope, profile_events.EventTrackedEvent).event
            person_id = await self._person(session, event.person_id)
            if person_id is None:
                return
            await self._outcomes.event_tracked(
                session,
                event_id=f"{event.source or 'api'}:{event.id}",
                person_id=person_id,
                event_type=event.type,
                properties=MessageToDict(event.properties),
                context=MessageToDict(event.context),
                source=event.source,
                at=_time(event.occurred_at, occurred_at),
            )
        elif envelope.type == DECISION_MADE:
            decision = unpack(envelope, decisioning_events.DecisionMadeEvent)
            person_id = await self._person(session, decision.person_id)
            if person_id is None or not decision.offer_ids:
                return
            await self._outcomes.offer_shown(
                session,
                decision_id=decision.decision_id,
                person_id=person_id,
                offer_ids=list(decision.offer_ids),
                at=occurred_at,
            )
        else:
            log.debug("ignoring event %s of type %s", envelope.id, envelope.type)
