"""What profile consumes: the event types of its durable consumers, and their handlers; each runs inside the
consumer's transaction, once per event. What profile publishes is in events.py.

Identity's lineage (identity.persons_merged, persons_unmerged, person_forgotten) is followed by
omni_kit.lineage with merge.py and erasure.py as its hooks (`lineage`): merges move the merged persons'
profiles to the survivor (gathered and applied together before the commit: see merge.Merger.merge_many),
unmerges move the restored person's events back, erasures delete the person. Segmentation's enter/exit
events feed the segment memberships read model; gateway message outcomes are recorded on the timeline.
Events about persons profile does not know are applied as far as they make sense, never refused: they may
simply arrive before the person's first event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid
from omni_kit.lineage import Lineage
from omni_profile import repository, wire
from omni_profile.domain import GATEWAY_SOURCE, MESSAGE_FAILED, MESSAGE_SENT, Event
from omni_profile.erasure import Eraser
from omni_profile.merge import Merger
from omni_profile.models import PROFILE_LINEAGE
from omni_profile.tracking import Tracker

log = logging.getLogger(__name__)

PERSON_ENTERED_SEGMENT = "segmentation.person_entered_segment"
PERSON_EXITED_SEGMENT = "segmentation.person_exited_segment"
MESSAGE_SENT_EVENT = "gateway.message_sent"
MESSAGE_FAILED_EVENT = "gateway.message_failed"
MESSAGE_RECEIPT_EVENT = "gateway.message_receipt"

GATEWAY_EVENT_PREFIX = "gateway:"
"""Timeline events recorded from gateway outcomes have the id "gateway:<message id>" (source "gateway")."""


def lineage(merger: Merger, eraser: Eraser) -> Lineage:
    """The handler of identity's lineage events: omni_kit.lineage over the profile rows, with the merger and
    the eraser as its hooks. Merges are gathered and applied together: one by one, a merge costs a dozen
    statements, and a cold start brings hundreds a second."""
    return Lineage(
        PROFILE_LINEAGE,
        on_merge=merger.merge_many,
        on_unmerge=merger.unmerge,
        on_erase=eraser.erase,
        gather_merges=True,
    )


class SegmentMembershipHandler:
    """Keeps the segment memberships read model from segmentation's enter and exit announcements."""

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        entered = envelope.type == PERSON_ENTERED_SEGMENT
        message = unpack(
            envelope,
            segmentation_events.PersonEnteredSegmentEvent
            if entered
            else segmentation_events.PersonExitedSegmentEvent,
        )
        person_id = parse_uuid(message.person_id or envelope.person_id)
        if person_id is None or not message.segment_id:
            log.error("ignoring %s %s without a valid person or segment", envelope.type, envelope.id)
            return
        where = (await PROFILE_LINEAGE.whereabouts(session, [person_id]))[person_id]
        if where.forgotten:
            return  # erased: nothing of the person is kept
        person_id = where.person_id
        changed_at = (
            envelope.occurred_at.ToDatetime(tzinfo=UTC)
            if envelope.HasField("occurred_at")
            else datetime.now(UTC)
        )
        await repository.record_membership(
            session,
            person_id,
            message.segment_id,
            message.segment_name,
            member=entered,
            changed_at=changed_at,
        )


class MessageOutcomeHandler:
    """Records gateway.message_sent / gateway.message_failed on the person's timeline, and the receipts the
    gateway announces (gateway.message_receipt) as "<channel>_<kind>" events ("email_opened",
    "sms_delivered", ...), so computed traits such as last_email_open_at come from real opens."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        if envelope.type == MESSAGE_SENT_EVENT:
            message = unpack(envelope, gateway_events.MessageSentEvent).message
            event_type = MESSAGE_SENT
        elif envelope.type == MESSAGE_FAILED_EVENT:
            message = unpack(envelope, gateway_events.MessageFailedEvent).message
            event_type = MESSAGE_FAILED
        elif envelope.type == MESSAGE_RECEIPT_EVENT:
            receipt = receipt_event(unpack(envelope, gateway_events.MessageReceiptEvent), envelope)
            if receipt is None:
                log.error("ignoring %s %s: no valid person, id, channel or kind", envelope.type, envelope.id)
                return
            await self._tracker.record(session, [receipt])
            return
        else:
            log.warning("ignoring unexpected event type %s", envelope.type)
            return
        event = outcome_event(message, event_type, envelope)
        if event is None:
            log.error("ignoring %s %s: the message has no valid person or id", envelope.type, envelope.id)
            return
        await self._tracker.record(session, [event])


def outcome_event(
    message: gateway_pb2.Message, event_type: str, envelope: envelope_pb2.Envelope
) -> Event | None:
    """The timeline event of a gateway outcome, or None when the message names no person or id."""
    person_id = parse_uuid(message.person_id)
    if person_id is None or not message.id:
        return None
    received_at = datetime.now(UTC)
    if message.HasField("update_time"):
        occurred_at = message.update_time.ToDatetime(tzinfo=UTC)
    elif envelope.HasField("occurred_at"):
        occurred_at = envelope.occurred_at.ToDatetime(tzinfo=UTC)
    else:
        occurred_at = received_at
    return Event(
        id=GATEWAY_EVENT_PREFIX + message.id,
        type=event_type,
        channel=wire.channel_name(message.channel) if message.channel in wire.KNOWN_CHANNELS else None,
        occurred_at=occurred_at,
        received_at=received_at,
        properties={
            "message_id": message.id,
            "template_id": message.template_id,
            "journey_id": message.journey_id,
            "status": _status_name(message.status),
            "error": message.error,
        },
        person_id=person_id,
        source=GATEWAY_SOURCE,
    )


def receipt_event(
    receipt: gateway_events.MessageReceiptEvent, envelope: envelope_pb2.Envelope
) -> Event | None:
    """The timeline event of a receipt: type "<channel>_<kind>" (e.g. "email_opened"), id
    "gateway:<message id>:<kind>" (so a message's open is on the timeline once), None when malformed."""
    message = receipt.message
    outcome = outcome_event(message, "", envelope)
    if (
        outcome is None
        or message.channel not in wire.KNOWN_CHANNELS
        or receipt.kind not in gateway_events.ReceiptKind.values()
        or receipt.kind == gateway_events.RECEIPT_KIND_UNSPECIFIED
    ):
        return None
    kind = gateway_events.ReceiptKind.Name(receipt.kind).removeprefix("RECEIPT_KIND_").lower()  # type: ignore[arg-type]
    channel = wire.channel_name(message.channel)
    if channel is None:
        return None
    occurred_at = (
        receipt.occur_time.ToDatetime(tzinfo=UTC) if receipt.HasField("occur_time") else outcome.occurred_at
    )
    return Event(
        id=f"{GATEWAY_EVENT_PREFIX}{message.id}:{kind}",
        type=f"{channel}_{kind}",
        channel=channel,
        occurred_at=occurred_at,
        received_at=outcome.received_at,
        properties={
            **outcome.properties,
            "provider": receipt.provider,
            "detail": receipt.detail,
        },
        person_id=outcome.person_id,
        source=GATEWAY_SOURCE,
    )


def _status_name(status: int) -> str:
    if status not in gateway_pb2.MessageStatus.values():
        return str(status)
    return gateway_pb2.MessageStatus.Name(status).removeprefix("MESSAGE_STATUS_").lower()  # type: ignore[arg-type]
