"""The events profile publishes and consumes: their types, how they are staged, and the handlers.

Published (payloads in omni.profile.v1.events): profile.event_tracked for every newly recorded event,
profile.profile_changed when traits or the cart change (or a merge lands), profile.consent_changed.
Consumed: identity.persons_merged (move the merged persons' profiles to the survivor) and gateway
message outcomes (recorded on the person's timeline).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2
from omni_kit.bus import Outbox, unpack
from omni_kit.ids import parse_uuid
from omni_profile import wire
from omni_profile.domain import MESSAGE_FAILED, MESSAGE_SENT, CartLine, Consent, Event

if TYPE_CHECKING:
    from omni_profile.merge import Merger
    from omni_profile.tracking import Tracker

log = logging.getLogger(__name__)

EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
CONSENT_CHANGED = "profile.consent_changed"

PERSONS_MERGED = "identity.persons_merged"
MESSAGE_SENT_EVENT = "gateway.message_sent"
MESSAGE_FAILED_EVENT = "gateway.message_failed"

GATEWAY_EVENT_PREFIX = "gateway:"
"""Timeline events recorded from gateway outcomes have the id "gateway:<message id>"."""


# -- publishing ------------------------------------------------------------------------------------------


async def stage_events_tracked(session: AsyncSession, outbox: Outbox, tracked: Sequence[Event]) -> None:
    """Stage profile.event_tracked for each newly recorded event (one insert)."""
    await outbox.add_envelopes(
        session,
        [
            outbox.envelope(
                events_pb2.EventTrackedEvent(event=wire.event_to_proto(event)),
                event_type=EVENT_TRACKED,
                person_id=str(event.person_id),
                occurred_at=event.occurred_at,
            )
            for event in tracked
        ],
    )


async def stage_profile_changed(
    session: AsyncSession,
    outbox: Outbox,
    person_id: uuid.UUID,
    *,
    traits: Mapping[str, Any],
    cart: Iterable[CartLine],
    changed: Sequence[str],
    merged_person_ids: Sequence[uuid.UUID] = (),
) -> None:
    """Stage profile.profile_changed with the person's traits and cart after the change."""
    payload = events_pb2.ProfileChangedEvent(
        person_id=str(person_id),
        traits=wire.dict_to_struct(traits),
        cart=wire.cart_to_proto(cart),
        changed=list(changed),
        merged_person_ids=[str(m) for m in merged_person_ids],
    )
    await outbox.add(session, payload, event_type=PROFILE_CHANGED, person_id=str(person_id))


async def stage_consent_changed(
    session: AsyncSession, outbox: Outbox, person_id: uuid.UUID, consent: Consent
) -> None:
    """Stage profile.consent_changed with the consent as stored."""
    payload = events_pb2.ConsentChangedEvent(person_id=str(person_id), consent=wire.consent_to_proto(consent))
    await outbox.add(session, payload, event_type=CONSENT_CHANGED, person_id=str(person_id))


# -- consuming -------------------------------------------------------------------------------------------


class PersonsMergedHandler:
    """Applies identity.persons_merged: the merged persons' profiles move to the survivor."""

    def __init__(self, merger: Merger) -> None:
        self._merger = merger

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        merged = unpack(envelope, identity_events.PersonsMergedEvent)
        survivor = parse_uuid(merged.survivor_person_id)
        merged_ids = [parse_uuid(m) for m in merged.merged_person_ids]
        if survivor is None or any(m is None for m in merged_ids):
            # Retrying cannot fix a malformed event; dropping it is all we can do.
            log.error("ignoring persons_merged %s with malformed person ids", envelope.id)
            return
        await self._merger.merge(session, survivor, [m for m in merged_ids if m is not None])


class MessageOutcomeHandler:
    """Records gateway.message_sent / gateway.message_failed on the person's timeline."""

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
    )


def _status_name(status: int) -> str:
    if status not in gateway_pb2.MessageStatus.values():
        return str(status)
    return gateway_pb2.MessageStatus.Name(status).removeprefix("MESSAGE_STATUS_").lower()  # type: ignore[arg-type]
