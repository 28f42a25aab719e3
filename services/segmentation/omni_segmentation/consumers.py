"""What segmentation consumes on its one durable consumer: profile's tracked events, changes and erasures, and
identity's lineage (through omni_kit.lineage), with their handlers. What it publishes is in events.py."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2 as profile_events
from omni_kit import contact
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid
from omni_kit.lineage import LINEAGE_EVENTS, Erasure, Lineage, LineageTable, Merge, Unmerge
from omni_segmentation.erasure import PersonEraser
from omni_segmentation.events import current_trace_context
from omni_segmentation.facts import FactsRecorder
from omni_segmentation.merge import PersonMerger
from omni_segmentation.records import ProfileChange, TrackedEvent
from omni_segmentation.unmerge import PersonUnmerger

log = logging.getLogger(__name__)

EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
PERSON_ERASED = "profile.person_erased"
CONSUMED = (EVENT_TRACKED, PROFILE_CHANGED, PERSON_ERASED, contact.CONTACT_VERDICT_CHANGED, *LINEAGE_EVENTS)


def cart_units(cart: object) -> int:
    """The number of units in an omni.common.v1.Cart."""
    return sum(max(item.quantity, 0) for item in getattr(cart, "items", ()))


_FACTS = frozenset({"traits", "cart", "computed_traits"})
"""The parts of a profile change segmentation keeps."""

_TRACKED = "omni_segmentation.tracked"
_CHANGES = "omni_segmentation.profile_changes"
_NAMED = "omni_segmentation.named"
_VERDICTS = "omni_segmentation.verdicts"
"""Where a transaction's tracked events and profile changes, and the persons they name, are gathered
(session.info)."""


class EventHandlers:
    """Turns consumed envelopes into read-model changes; each runs in the consumer's transaction.

    Tracked events and profile changes, nearly all of the stream, are gathered and applied together when
    the transaction's events are handled (`finish`), or before an erasure, or a merge or unmerge of a
    person they name, which are applied in their place: one by one, each cost about ten statements, and
    ingestion brings thousands a second. Identity's lineage goes through omni_kit.lineage, with the merger,
    unmerger and eraser as its hooks (`lineage`).
    Events about persons segmentation does not know are fine (the person is learnt); malformed ids are
    logged and skipped, since retrying cannot fix them.
    """

    def __init__(
        self,
        facts: FactsRecorder,
        merger: PersonMerger,
        unmerger: PersonUnmerger,
        eraser: PersonEraser,
        lineage: LineageTable,
    ) -> None:
        self._facts = facts
        self._merger = merger
        self._unmerger = unmerger
        self._eraser = eraser
        self._verdicts = contact.ContactVerdictHandler()
        self.lineage = Lineage(
            lineage, on_merge=self._persons_merged, on_unmerge=self._persons_unmerged, on_erase=self._erase
        )

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope inside the consumer's transaction, by its type."""
        if envelope.type == EVENT_TRACKED:
            self._event_tracked(session, envelope)
            return
        if envelope.type == PROFILE_CHANGED:
            self._profile_changed(session, envelope)
            return
        if envelope.type == contact.CONTACT_VERDICT_CHANGED:
            await self._contact_verdict_changed(session, envelope)
            return
        if envelope.type in LINEAGE_EVENTS:
            await self.lineage(session, envelope)
        elif envelope.type == PERSON_ERASED:
            await self._person_erased(session, envelope)
        else:
            log.warning("ignoring event %s of unexpected type %s", envelope.id, envelope.type)

    async def finish(self, session: AsyncSession) -> None:
        """Apply the tracked events and profile changes gathered so far in this transaction."""
        await self.lineage.finish(session)
        tracked: list[TrackedEvent] = session.info.pop(_TRACKED, [])
        changes: list[ProfileChange] = session.info.pop(_CHANGES, [])
        verdicts: dict[uuid.UUID, dict[str, str]] = session.info.pop(_VERDICTS, {})
        session.info.pop(_NAMED, None)
        if tracked or changes or verdicts:
            await self._facts.record_many(session, tracked, changes, datetime.now(UTC), reconsidered=verdicts)

    async def _contact_verdict_changed(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """profile.contact_verdict_changed: kept by omni_kit.contact's handler (newest version wins) at once,
        and the person evaluated with the rest of the transaction's facts (contact rules read the verdicts)."""
        await self._verdicts(session, envelope)
        person_id = parse_uuid(unpack(envelope, profile_events.ContactVerdictChangedEvent).person_id)
        if person_id is not None:
            session.info.setdefault(_NAMED, set()).add(person_id)
            session.info.setdefault(_VERDICTS, {})[person_id] = current_trace_context()

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
                channel=event.channel,
                properties=event.properties.fields if event.properties.fields else None,
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
            return  # consent or events only: nothing segmentation keeps changed
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
                computed_traits=(
                    json_format.MessageToDict(change.computed_traits) if "computed_traits" in parts else None
                ),
            )
        )

    async def _flush_naming(self, session: AsyncSession, persons: set[uuid.UUID]) -> None:
        """Apply what was gathered first when it names one of these persons, so a merge or unmerge finds it
        where the log put it. What was gathered about other persons does not meet it (an event of a person
        merged into one of these earlier lands on the final survivor either way): it stays gathered."""
        if session.info.get(_NAMED, set()) & persons:
            await self.finish(session)

    async def _persons_merged(self, session: AsyncSession, merges: Sequence[Merge]) -> None:
        for merge in merges:
            await self._flush_naming(session, {merge.survivor_id, *merge.merged_ids})
            await self._merger.merge(
                session, merge, trace_context=current_trace_context(), now=datetime.now(UTC)
            )

    async def _persons_unmerged(self, session: AsyncSession, unmerge: Unmerge) -> None:
        await self._flush_naming(
            session, {unmerge.survivor_id, unmerge.restored_id, *unmerge.restored_merged_ids}
        )
        await self._unmerger.unmerge(
            session, unmerge, trace_context=current_trace_context(), now=datetime.now(UTC)
        )

    async def _erase(self, session: AsyncSession, erasure: Erasure) -> None:
        await self.finish(session)
        await self._eraser.erase(session, erasure.person_ids)

    async def _person_erased(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """profile.person_erased: the same erasure as identity's (tombstones included), for the ids profile
        names; malformed ones cannot name anything stored here (every stored id is a UUID)."""
        erased = unpack(envelope, profile_events.PersonErasedEvent)
        raw_ids = [r for r in (erased.person_id, *erased.merged_person_ids) if r]
        person_ids = [p for p in (parse_uuid(r) for r in raw_ids) if p is not None]
        if len(person_ids) < len(raw_ids):
            log.warning("person_erased %s names malformed person ids; erasing the others", envelope.id)
        await self.finish(session)
        if person_ids:
            await self.lineage.forget(session, person_ids[0], person_ids, event_id=envelope.id)
