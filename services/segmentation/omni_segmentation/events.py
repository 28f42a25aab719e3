"""The events segmentation publishes and consumes, and the handlers of the consumed ones."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf import json_format
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2 as profile_events
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid
from omni_segmentation.records import ProfileChange, TrackedEvent

if TYPE_CHECKING:
    from omni_segmentation.erasure import PersonEraser
    from omni_segmentation.facts import FactsRecorder
    from omni_segmentation.merge import PersonMerger
    from omni_segmentation.unmerge import PersonUnmerger

log = logging.getLogger(__name__)

# Published (payloads in omni.segmentation.v1.events).
PERSON_ENTERED_SEGMENT = "segmentation.person_entered_segment"
PERSON_EXITED_SEGMENT = "segmentation.person_exited_segment"

# Consumed.
EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
PERSONS_MERGED = "identity.persons_merged"
PERSONS_UNMERGED = "identity.persons_unmerged"
PERSON_FORGOTTEN = "identity.person_forgotten"
PERSON_ERASED = "profile.person_erased"
CONSUMED = (
    EVENT_TRACKED,
    PROFILE_CHANGED,
    PERSONS_MERGED,
    PERSONS_UNMERGED,
    PERSON_FORGOTTEN,
    PERSON_ERASED,
)


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span (the consumer's, a child of the producer's)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def cart_units(cart: object) -> int:
    """The number of units in an omni.common.v1.Cart."""
    return sum(max(item.quantity, 0) for item in getattr(cart, "items", ()))


_FACTS = frozenset({"traits", "cart"})
"""The parts of a profile change segmentation keeps."""

_TRACKED = "omni_segmentation.tracked"
_CHANGES = "omni_segmentation.profile_changes"
_NAMED = "omni_segmentation.named"
"""Where a transaction's tracked events and profile changes, and the persons they name, are gathered
(session.info)."""


class EventHandlers:
    """Turns consumed envelopes into read-model changes; each runs in the consumer's transaction.

    Tracked events and profile changes, nearly all of the stream, are gathered and applied together when
    the transaction's events are handled (`finish`), or before an erasure, or a merge or unmerge of a
    person they name, which are applied in their place: one by one, each cost about ten statements, and
    ingestion brings thousands a second.
    Events about persons segmentation does not know are fine (the person is learnt); malformed ids are
    logged and skipped, since retrying cannot fix them.
    """

    def __init__(
        self, facts: FactsRecorder, merger: PersonMerger, unmerger: PersonUnmerger, eraser: PersonEraser
    ) -> None:
        self._facts = facts
        self._merger = merger
        self._unmerger = unmerger
        self._eraser = eraser

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction, by its type."""
        if envelope.type == EVENT_TRACKED:
            self._event_tracked(session, envelope)
            return
        if envelope.type == PROFILE_CHANGED:
            self._profile_changed(session, envelope)
            return
        if envelope.type == PERSONS_MERGED:
            await self._persons_merged(session, envelope)
            return
        if envelope.type == PERSONS_UNMERGED:
            await self._persons_unmerged(session, envelope)
            return
        await self.finish(session)
        if envelope.type == PERSON_FORGOTTEN:
            forgotten = unpack(envelope, identity_events.PersonForgottenEvent)
            await self._erase(session, envelope, [forgotten.person_id, *forgotten.forgotten_person_ids])
        elif envelope.type == PERSON_ERASED:
            erased = unpack(envelope, profile_events.PersonErasedEvent)
            await self._erase(session, envelope, [erased.person_id, *erased.merged_person_ids])
        else:
            log.warning("ignoring event %s of unexpected type %s", envelope.id, envelope.type)

    async def finish(self, session: AsyncSession) -> None:
        """Apply the tracked events and profile changes gathered so far in this transaction."""
        tracked: list[TrackedEvent] = session.info.pop(_TRACKED, [])
        changes: list[ProfileChange] = session.info.pop(_CHANGES, [])
        session.info.pop(_NAMED, None)
        if tracked or changes:
            await self._facts.record_many(session, tracked, changes, datetime.now(UTC))

    def _event_tracked(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        event = unpack(envelope, profile_events.EventTrackedEvent).event
        person_id = parse_uuid(event.person_id or envelope.person_id)
        if person_id is None or not event.type:
            log.warning("skipping event_tracked %s: no valid person id or event type", envelope.id)
            return
        occurred_at = (
            event.occurred_at.ToDatetime(tzinfo=UTC)
            if event.HasField("occurred_at")
            else envelope.occurred_at.ToDatetime(tzinfo=UTC)
        )
        session.info.setdefault(_NAMED, set()).add(person_id)
        session.info.setdefault(_TRACKED, []).append(
            TrackedEvent(
                person_id=person_id,
                event_id=event.id or envelope.id,
                event_type=event.type,
                occurred_at=occurred_at,
                trace_context=current_trace_context(),
            )
        )

    def _profile_changed(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        change = unpack(envelope, profile_events.ProfileChangedEvent)
        person_id = parse_uuid(change.person_id or envelope.person_id)
        if person_id is None:
            log.warning("skipping profile_changed %s: no valid person id", envelope.id)
            return
        # An empty `changed` list (an older producer) means the payload is the whole profile.
        parts = set(change.changed) or _FACTS
        moved_ids, moved_from = tuple(dict.fromkeys(change.moved_event_ids)), None
        if moved_ids:
            moved_from = parse_uuid(change.moved_from_person_id)
            if moved_from is None:
                log.warning("profile_changed %s lists moved events but not whose: not moved", envelope.id)
                moved_ids = ()
        if not parts & _FACTS and not moved_ids:
            return  # computed traits, consent or events only: nothing segmentation keeps changed
        named = session.info.setdefault(_NAMED, set())
        named.add(person_id)
        if moved_from is not None:
            named.add(moved_from)
        session.info.setdefault(_CHANGES, []).append(
            ProfileChange(
                person_id=person_id,
                traits=json_format.MessageToDict(change.traits) if "traits" in parts else None,
                cart_units=cart_units(change.cart) if "cart" in parts else None,
                changed_at=envelope.occurred_at.ToDatetime(tzinfo=UTC),
                trace_context=current_trace_context(),
                moved_event_ids=moved_ids,
                moved_from=moved_from,
            )
        )

    async def _persons_merged(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        merge = unpack(envelope, identity_events.PersonsMergedEvent)
        survivor_id = parse_uuid(merge.survivor_person_id)
        merged_ids = [parse_uuid(m) for m in merge.merged_person_ids]
        if survivor_id is None or any(m is None for m in merged_ids):
            log.warning("skipping persons_merged %s: malformed person ids", envelope.id)
            return
        # What was gathered about other persons does not meet this merge (an event of a person merged into
        # one of these earlier lands on the final survivor either way): it stays gathered. Otherwise it is
        # applied first, so the merge finds it where the log put it.
        if session.info.get(_NAMED, set()) & {survivor_id, *merged_ids}:
            await self.finish(session)
        await self._merger.merge(
            session,
            survivor_id=survivor_id,
            merged_ids=[m for m in merged_ids if m is not None],
            trace_context=current_trace_context(),
            now=datetime.now(UTC),
        )

    async def _persons_unmerged(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        unmerge = unpack(envelope, identity_events.PersonsUnmergedEvent)
        survivor_id = parse_uuid(unmerge.survivor_person_id)
        restored_id = parse_uuid(unmerge.restored_person_id)
        also = [parse_uuid(m) for m in unmerge.restored_merged_person_ids]
        if survivor_id is None or restored_id is None or any(m is None for m in also):
            log.warning("skipping persons_unmerged %s: malformed person ids", envelope.id)
            return
        restored_merged = [m for m in also if m is not None]
        # As for a merge: what was gathered about these persons is applied first, where the log put it.
        if session.info.get(_NAMED, set()) & {survivor_id, restored_id, *restored_merged}:
            await self.finish(session)
        await self._unmerger.unmerge(
            session,
            survivor_id=survivor_id,
            restored_id=restored_id,
            restored_merged_ids=restored_merged,
            trace_context=current_trace_context(),
            now=datetime.now(UTC),
        )

    async def _erase(
        self, session: AsyncSession, envelope: envelope_pb2.Envelope, raw_ids: list[str]
    ) -> None:
        # Malformed ids cannot name anything stored here (every stored id is a UUID): skip them, erase the rest.
        person_ids = [p for p in (parse_uuid(r) for r in raw_ids if r) if p is not None]
        if len(person_ids) < len([r for r in raw_ids if r]):
            log.warning(
                "erasure %s (%s) names malformed person ids; erasing the others", envelope.id, envelope.type
            )
        await self._eraser.erase(session, person_ids)
