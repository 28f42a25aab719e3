"""Live membership: evaluate every segment for a person, record who entered and left, announce it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.segmentation.v1 import events_pb2
from omni_kit import contact
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

    async def evaluate_person(self, session: AsyncSession, person_id: uuid.UUID, now: datetime) -> Changes:
        """Re-evaluate every segment for the person at now; publish enter/exit events in this transaction.

        The events capture the current trace context, so callers run this inside the span that caused it.
        A person segmentation does not know is left alone.
        """
        changes = await self.evaluate_persons(session, [person_id], now)
        return changes.get(person_id, Changes())

    async def evaluate_persons(
        self,
        session: AsyncSession,
        person_ids: Iterable[uuid.UUID],
        now: datetime,
        *,
        trace_contexts: Mapping[uuid.UUID, dict[str, str]] | None = None,
    ) -> dict[uuid.UUID, Changes]:
        """evaluate_person for many persons, in about eight statements whatever their number: their rows
        locked in id order, their facts and memberships read together, the changes written together.

        A person's enter/exit events carry the trace context given for them in `trace_contexts` (the event
        that caused the evaluation), else the current one. Persons segmentation does not know are left out.
        """
        persons = await self._repository.lock_persons(session, sorted(set(person_ids)))
        if not persons:
            return {}
        ids = list(persons)
        segments = await self._catalog.segments(session)
        needs = self._catalog.requirements(list(segments))
        facts_of = await load_facts(self._repository, session, persons, needs, now)
        current = await self._repository.memberships_of(session, ids) if segments else {}
        results: dict[uuid.UUID, Changes] = {}
        entering: list[tuple[uuid.UUID, uuid.UUID]] = []
        leaving: list[tuple[uuid.UUID, uuid.UUID]] = []
        next_checks: dict[uuid.UUID, datetime | None] = {}
        for person_id, person in persons.items():
            changes = _changes(segments, facts_of[person_id], current.get(person_id, {}), now)
            results[person_id] = changes
            entering += [(person_id, s.id) for s in changes.entered]
            leaving += [(person_id, s.id) for s in changes.exited]
            if changes.next_check_at != person.next_check_at:
                next_checks[person_id] = changes.next_check_at
        await self._repository.add_membership_pairs(session, entering, now)
        await self._repository.remove_membership_pairs(session, leaving, now)
        envelopes: list[envelope_pb2.Envelope] = []
        for person_id, changes in results.items():
            if not (changes.entered or changes.exited):
                continue
            carrier = (trace_contexts or {}).get(person_id)
            token = otel_context.attach(propagate.extract(carrier)) if carrier else None
            try:
                envelopes += self._envelopes(
                    person_id, entered=changes.entered, exited=changes.exited, at=now
                )
            finally:
                if token is not None:
                    otel_context.detach(token)
        await self._outbox.add_envelopes(session, envelopes)
        await self._repository.set_next_checks(session, next_checks)
        return results

    async def announce_exits(
        self, session: AsyncSession, segment: Segment, person_ids: Sequence[uuid.UUID], at: datetime
    ) -> None:
        """Stage an exit event of the segment for each person (its members, as it is archived), each in the
        trace of the person's last change."""
        carriers = await self._repository.trace_contexts(session, person_ids)
        envelopes: list[envelope_pb2.Envelope] = []
        for person_id in person_ids:
            carrier = carriers.get(person_id)
            token = otel_context.attach(propagate.extract(carrier)) if carrier else None
            try:
                envelopes += self._envelopes(person_id, entered=[], exited=[segment], at=at)
            finally:
                if token is not None:
                    otel_context.detach(token)
        await self._outbox.add_envelopes(session, envelopes)

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
        await self._outbox.add_envelopes(
            session, self._envelopes(person_id, entered=entered, exited=exited, at=at)
        )

    def _envelopes(
        self,
        person_id: uuid.UUID,
        *,
        entered: Sequence[Segment],
        exited: Sequence[Segment],
        at: datetime,
    ) -> list[envelope_pb2.Envelope]:
        """The person_entered_segment / person_exited_segment events, in the current trace context."""
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
        return envelopes


async def load_facts(
    repository: Repository,
    session: AsyncSession,
    persons: Mapping[uuid.UUID, PersonRecord],
    needs: rules.Requirements,
    now: datetime,
) -> dict[uuid.UUID, rules.PersonFacts]:
    """What rules with these requirements can ask of each person, read for all of them at once: their stored
    facts, and the occurrences and last-seen times of the event types the rules name."""
    ids = list(persons)
    event_times: dict[uuid.UUID, dict[str, list[datetime]]] = {}
    event_details: dict[uuid.UUID, dict[str, list[rules.EventDetail]]] = {}
    last_events: dict[uuid.UUID, dict[str, datetime]] = {}
    if ids and needs.counted:
        since = now - max(needs.counted.values())
        event_times = await repository.event_times(session, ids, sorted(needs.counted), since)
    if ids and needs.detailed:
        since = now - max(needs.detailed.values())
        event_details = await repository.event_details(session, ids, sorted(needs.detailed), since)
    if ids and needs.since:
        last_events = await repository.last_events(session, ids, sorted(needs.since))
    memberships: dict[uuid.UUID, dict[uuid.UUID, datetime]] = {}
    if ids and needs.segments:
        memberships = await repository.memberships_of(session, ids)
    first_events: dict[uuid.UUID, dict[str, datetime]] = {}
    if ids and needs.firsts:
        first_events = await repository.first_events(session, ids, sorted(needs.firsts))
    contacts: dict[uuid.UUID, dict[tuple[int, str], tuple[bool, str]]] = {}
    if ids and needs.contacts:
        for person_id, known in (await contact.verdicts_of(session, ids)).items():
            contacts[person_id] = {}
            for channel, purpose in needs.contacts:
                verdict = known.of(channel, contact.Purpose(purpose))
                contacts[person_id][(channel, purpose)] = (verdict.allowed, verdict.reason.value)
    return {
        person_id: rules.PersonFacts(
            person_id=person_id,
            traits=person.traits,
            cart_units=person.cart_units,
            computed_traits=person.computed_traits,
            event_times=event_times.get(person_id, {}),
            last_event_at=last_events.get(person_id, {}),
            event_details=event_details.get(person_id, {}),
            first_event_at=first_events.get(person_id, {}),
            segments={s: True for s in memberships.get(person_id, {}) if s in needs.segments},
            contact=contacts.get(person_id, {}),
        )
        for person_id, person in persons.items()
    }


def _changes(
    segments: Sequence[Segment],
    facts: rules.PersonFacts,
    current: Mapping[uuid.UUID, datetime],
    now: datetime,
) -> Changes:
    """Which segments a person enters and leaves given their facts, and when the answer may next change."""
    changes = Changes()
    # Segments come dependencies first: an in_segment rule reads what this pass decided.
    decided: dict[uuid.UUID, bool] = {}
    facts = replace(facts, segments=decided)
    for segment in segments:
        member = rules.evaluate(segment.condition, facts, now)
        decided[segment.id] = member
        if member and segment.id not in current:
            changes.entered.append(segment)
        elif not member and segment.id in current:
            changes.exited.append(segment)
        change_at = rules.next_change(segment.condition, facts, now)
        if change_at is not None and (changes.next_check_at is None or change_at < changes.next_check_at):
            changes.next_check_at = change_at
    return changes
