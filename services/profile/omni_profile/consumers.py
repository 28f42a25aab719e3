"""Handlers of the events profile consumes; each runs inside the consumer's transaction, once per event
(persons_merged events are gathered and applied together before the commit: see merge.Merger.merge_many).

identity.persons_merged moves the merged persons' profiles to the survivor; identity.persons_unmerged moves
the restored person's events back; identity.person_forgotten erases the person; segmentation's enter/exit
events feed the segment memberships read model; gateway message outcomes are recorded on the timeline.
Events about persons profile does not know are applied as far as they make sense, never refused: they may
simply arrive before the person's first event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit.bus import Handler, unpack
from omni_kit.ids import parse_uuid
from omni_profile import persons, repository, wire
from omni_profile.domain import GATEWAY_SOURCE, MESSAGE_FAILED, MESSAGE_SENT, Event
from omni_profile.events import (
    GATEWAY_EVENT_PREFIX,
    MESSAGE_FAILED_EVENT,
    MESSAGE_SENT_EVENT,
    PERSON_ENTERED_SEGMENT,
    PERSON_FORGOTTEN,
    PERSONS_MERGED,
    PERSONS_UNMERGED,
)

if TYPE_CHECKING:
    from omni_profile.erasure import Eraser
    from omni_profile.merge import Merger
    from omni_profile.tracking import Tracker

log = logging.getLogger(__name__)

_MERGES = "omni_profile.persons_merged"
"""Where the persons_merged of a transaction are gathered (session.info)."""


class LineageHandler:
    """Identity's lineage events through one consumer, so merges, unmerges and erasures apply in the order
    identity made them."""

    def __init__(
        self,
        merged: PersonsMergedHandler,
        unmerged: PersonsUnmergedHandler,
        forgotten: PersonForgottenHandler,
    ) -> None:
        self._handlers: dict[str, Handler] = {
            PERSONS_MERGED: merged,
            PERSONS_UNMERGED: unmerged,
            PERSON_FORGOTTEN: forgotten,
        }
        self._merged = merged

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        handler = self._handlers.get(envelope.type)
        if handler is None:
            log.warning("ignoring unexpected event type %s", envelope.type)
            return
        if handler is not self._merged:
            # The merges gathered so far come first: they happened before this.
            await self._merged.finish(session)
        await handler(session, envelope)

    async def finish(self, session: AsyncSession) -> None:
        """Apply the merges gathered in this transaction (called by the consumer before it commits)."""
        await self._merged.finish(session)


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
        # Gathered and applied together when the transaction's events are all handled (finish): one by one,
        # a merge costs a dozen statements, and a cold start brings hundreds a second.
        session.info.setdefault(_MERGES, []).append((survivor, [m for m in merged_ids if m is not None]))

    async def finish(self, session: AsyncSession) -> None:
        """Apply the merges gathered in this transaction, in order."""
        merges = session.info.pop(_MERGES, [])
        if merges:
            await self._merger.merge_many(session, merges)


class PersonsUnmergedHandler:
    """Applies identity.persons_unmerged: the restored person's events move back to it."""

    def __init__(self, merger: Merger) -> None:
        self._merger = merger

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        unmerged = unpack(envelope, identity_events.PersonsUnmergedEvent)
        survivor = parse_uuid(unmerged.survivor_person_id)
        restored = parse_uuid(unmerged.restored_person_id)
        also = [parse_uuid(m) for m in unmerged.restored_merged_person_ids]
        if survivor is None or restored is None or any(m is None for m in also):
            log.error("ignoring persons_unmerged %s with malformed person ids", envelope.id)
            return
        await self._merger.unmerge(
            session,
            survivor,
            restored,
            [m for m in also if m is not None],
            [(i.type, i.value) for i in unmerged.moved_identifiers],
        )


class PersonForgottenHandler:
    """Applies identity.person_forgotten: everything of the person is deleted, and that is announced."""

    def __init__(self, eraser: Eraser) -> None:
        self._eraser = eraser

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction."""
        forgotten = unpack(envelope, identity_events.PersonForgottenEvent)
        person = parse_uuid(forgotten.person_id or envelope.person_id)
        others = [parse_uuid(p) for p in forgotten.forgotten_person_ids]
        if person is None or any(p is None for p in others):
            log.error("ignoring person_forgotten %s with malformed person ids", envelope.id)
            return
        await self._eraser.erase(session, person, [p for p in others if p is not None and p != person])


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
        state = await repository.profile_state(session, person_id)
        if state is not None and state[2]:
            return  # erased: nothing of the person is kept
        if state is not None and state[1] is not None:
            current = await persons.find_current(session, person_id)
            if current is None:
                return
            person_id = current[0]
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
        source=GATEWAY_SOURCE,
    )


def _status_name(status: int) -> str:
    if status not in gateway_pb2.MessageStatus.values():
        return str(status)
    return gateway_pb2.MessageStatus.Name(status).removeprefix("MESSAGE_STATUS_").lower()  # type: ignore[arg-type]
