"""Live membership: evaluate every segment for a person, record who entered and left, announce it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni.segmentation.v1 import events_pb2
from omni_kit.bus import Outbox
from omni_segmentation import rules
from omni_segmentation.catalog import Segment, SegmentCatalog
from omni_segmentation.events import PERSON_ENTERED_SEGMENT, PERSON_EXITED_SEGMENT
from omni_segmentation.records import PersonRecord
from omni_segmentation.repository import Repository


@dataclass
class Changes:
    """What one evaluation changed for a person."""

    entered: list[Segment] = field(default_factory=list)
    exited: list[Segment] = field(default_factory=list)
    next_check_at: datetime | None = None


class MembershipEvaluator:
    """Evaluates a person against every segment and keeps their memberships and next check up to date."""

    def __init__(self, repository: Repository, catalog: SegmentCatalog, outbox: Outbox) -> None:
        self._repository = repository
        self._catalog = catalog
        self._outbox = outbox

    async def facts_of(
        self, session: AsyncSession, person: PersonRecord, segments: Sequence[Segment], now: datetime
    ) -> rules.PersonFacts:
        """The facts the segments need about the person."""
        needs = self._catalog.requirements(list(segments))
        longest = needs.longest_window
        event_times = (
            await self._repository.event_times(
                session, person.person_id, sorted(needs.counted), now - longest
            )
            if longest is not None
            else {}
        )
        last_event_at = await self._repository.last_events(session, person.person_id, sorted(needs.since))
        return rules.PersonFacts(
            traits=person.traits,
            cart_units=person.cart_units,
            event_times=event_times,
            last_event_at=last_event_at,
        )

    async def evaluate_person(self, session: AsyncSession, person_id: uuid.UUID, now: datetime) -> Changes:
        """Re-evaluate every segment for the person at now; publish enter/exit events in this transaction.

        The events capture the current trace context, so callers run this inside the span that caused it.
        A person segmentation does not know is left alone.
        """
        person = await self._repository.lock_person(session, person_id)
        if person is None:
            return Changes()
        segments = await self._catalog.segments(session)
        facts = await self.facts_of(session, person, segments, now) if segments else rules.PersonFacts()
        current = await self._repository.memberships_of(session, person_id) if segments else {}
        changes = Changes()
        for segment in segments:
            member = rules.evaluate(segment.condition, facts, now)
            if member and segment.id not in current:
                changes.entered.append(segment)
            elif not member and segment.id in current:
                changes.exited.append(segment)
            change_at = rules.next_change(segment.condition, facts, now)
            if change_at is not None and (changes.next_check_at is None or change_at < changes.next_check_at):
                changes.next_check_at = change_at
        await self._repository.add_memberships(session, person_id, [s.id for s in changes.entered], now)
        if changes.exited:
            await self._repository.remove_memberships(session, [person_id], [s.id for s in changes.exited])
        await self.announce(session, person_id, entered=changes.entered, exited=changes.exited, at=now)
        if changes.next_check_at != person.next_check_at:
            await self._repository.set_next_check(session, person_id, changes.next_check_at)
        return changes

    async def drop_all(self, session: AsyncSession, person_ids: Sequence[uuid.UUID], now: datetime) -> None:
        """End every membership of these persons (they were merged away), announcing each exit."""
        if not person_ids:
            return
        removed = await self._repository.remove_memberships(session, person_ids)
        if not removed:
            return
        by_id = {s.id: s for s in await self._catalog.segments(session)}
        for person_id, segment_id in removed:
            segment = by_id.get(segment_id)
            if segment is not None:
                await self.announce(session, person_id, entered=[], exited=[segment], at=now)

    async def announce(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        *,
        entered: Sequence[Segment],
        exited: Sequence[Segment],
        at: datetime,
    ) -> None:
        """Stage person_entered_segment / person_exited_segment events in the outbox."""
        person = str(person_id)
        envelopes = [
            self._outbox.envelope(
                events_pb2.PersonEnteredSegmentEvent(
                    person_id=person, segment_id=str(s.id), segment_name=s.name
                ),
                event_type=PERSON_ENTERED_SEGMENT,
                person_id=person,
                occurred_at=at,
            )
            for s in entered
        ]
        envelopes += [
            self._outbox.envelope(
                events_pb2.PersonExitedSegmentEvent(
                    person_id=person, segment_id=str(s.id), segment_name=s.name
                ),
                event_type=PERSON_EXITED_SEGMENT,
                person_id=person,
                occurred_at=at,
            )
            for s in exited
        ]
        await self._outbox.add_envelopes(session, envelopes)
