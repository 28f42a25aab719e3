"""What decisioning consumes: the event types of its one durable consumer, and their handlers. What it publishes
is in events.py."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_decisioning.entities import SegmentEntry
from omni_decisioning.journeys import Journeys
from omni_decisioning.orchestration.engine import Engine
from omni_decisioning.read_models import ReadModels
from omni_kit import contact
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid
from omni_kit.lineage import LINEAGE_EVENTS, Lineage

log = logging.getLogger(__name__)

PERSON_ENTERED_SEGMENT = "segmentation.person_entered_segment"
PERSON_EXITED_SEGMENT = "segmentation.person_exited_segment"
CONTACT_VERDICT_CHANGED = contact.CONTACT_VERDICT_CHANGED
MESSAGE_SENT = "gateway.message_sent"
MESSAGE_FAILED = "gateway.message_failed"

# One consumer for all of them, so that events are applied in the order the log holds them (the verdict of a
# consent granted before a segment entry is known when the entry starts a journey; an unmerge before an
# entry of the restored person).
CONSUMED = (
    PERSON_ENTERED_SEGMENT,
    PERSON_EXITED_SEGMENT,
    CONTACT_VERDICT_CHANGED,
    MESSAGE_SENT,
    MESSAGE_FAILED,
    *LINEAGE_EVENTS,
)


def _time(timestamp: Timestamp, fallback: datetime) -> datetime:
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return fallback
    return timestamp.ToDatetime(tzinfo=UTC)


class EventHandlers:
    """Applies consumed events; each call runs in the consumer's transaction, once per event id."""

    def __init__(
        self, read_models: ReadModels, journeys: Journeys, lineage: Lineage, engine: Engine | None = None
    ) -> None:
        self._read_models = read_models
        self._journeys = journeys
        self._engine = engine
        self._verdicts = contact.ContactVerdictHandler()
        self._lineage = lineage

    async def handle(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Dispatch one envelope by its type; unknown types are ignored."""
        occurred_at = _time(envelope.occurred_at, datetime.now(UTC))
        if envelope.type == PERSON_ENTERED_SEGMENT:
            await self._entered(session, envelope, occurred_at)
        elif envelope.type == PERSON_EXITED_SEGMENT:
            await self._exited(session, envelope, occurred_at)
        elif envelope.type == CONTACT_VERDICT_CHANGED:
            await self._verdicts(session, envelope)
        elif envelope.type in (MESSAGE_SENT, MESSAGE_FAILED):
            await self._message(session, envelope, occurred_at)
        elif envelope.type in LINEAGE_EVENTS:
            # Merges, unmerges and erasures: omni_kit.lineage, with the read models' hooks.
            await self._lineage(session, envelope)
        else:
            log.debug("ignoring event %s of type %s", envelope.id, envelope.type)

    async def _entered(
        self, session: AsyncSession, envelope: envelope_pb2.Envelope, occurred_at: datetime
    ) -> None:
        event = unpack(envelope, segmentation_events.PersonEnteredSegmentEvent)
        person_id, segment_id = _ids(envelope, event.person_id, event.segment_id)
        if person_id is None or segment_id is None:
            return
        person = await self._read_models.membership_changed(
            session, person_id=person_id, segment_id=segment_id, is_member=True, as_of=occurred_at
        )
        if person is None:
            # A newer fact (an exit) is known: the person is not in the segment now, so nothing starts.
            return
        await self._journeys.on_segment_entered(
            session,
            SegmentEntry(
                event_id=uuid.UUID(envelope.id),
                person_id=person,
                segment_id=segment_id,
                occurred_at=occurred_at,
            ),
        )
        if self._engine is not None:
            # Multi-step journeys entered by the segment.
            await self._engine.on_segment_entered(session, person, segment_id, uuid.UUID(envelope.id))

    async def _message(
        self, session: AsyncSession, envelope: envelope_pb2.Envelope, occurred_at: datetime
    ) -> None:
        """The gateway sent or failed a message: a marketing message sent counts against the contact policy's
        caps (once per request id), one that failed does not."""
        sent = envelope.type == MESSAGE_SENT
        event = unpack(
            envelope, gateway_events.MessageSentEvent if sent else gateway_events.MessageFailedEvent
        )
        message = event.message
        if not sent:
            await self._read_models.message_failed(session, message.request_id)
            return
        person_id = parse_uuid(message.person_id)
        if person_id is None or message.purpose == profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL:
            return
        at = _time(message.update_time, occurred_at)
        await self._read_models.message_sent(
            session, request_id=message.request_id, person_id=person_id, channel=message.channel, at=at
        )

    async def _exited(
        self, session: AsyncSession, envelope: envelope_pb2.Envelope, occurred_at: datetime
    ) -> None:
        event = unpack(envelope, segmentation_events.PersonExitedSegmentEvent)
        person_id, segment_id = _ids(envelope, event.person_id, event.segment_id)
        if person_id is None or segment_id is None:
            return
        await self._read_models.membership_changed(
            session, person_id=person_id, segment_id=segment_id, is_member=False, as_of=occurred_at
        )


def _ids(
    envelope: envelope_pb2.Envelope, person: str, segment: str
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    person_id, segment_id = parse_uuid(person), parse_uuid(segment)
    if person_id is None or segment_id is None:
        # Retrying cannot fix a malformed id, so the event is recorded as seen and skipped.
        log.warning("ignoring event %s: person %r, segment %r", envelope.id, person, segment)
    return person_id, segment_id
