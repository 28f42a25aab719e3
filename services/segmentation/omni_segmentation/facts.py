"""The per-person facts read model: what profile's events tell segmentation, and re-evaluation after each."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.lineage import LineageTable
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.records import PersonRecord, ProfileChange, TrackedEvent
from omni_segmentation.repository import Occurrence, Repository
from omni_segmentation.vocabulary import EVENT_TYPE, PROPERTY, TRAIT, Vocabulary


class FactsRecorder:
    """Applies profile's events to the read model, then re-evaluates the person's segments.

    An event or change naming a merged id counts for the person it leads to now (omni_kit.lineage); one
    naming a forgotten person is dropped: profile staged it before the erasure reached it, and it would
    bring the person back.
    """

    def __init__(
        self,
        repository: Repository,
        evaluator: MembershipEvaluator,
        lineage: LineageTable,
        vocabulary: Vocabulary,
        catalog: SegmentCatalog,
    ) -> None:
        self._catalog = catalog
        self._repository = repository
        self._evaluator = evaluator
        self._lineage = lineage
        self._vocabulary = vocabulary

    async def record_many(
        self,
        session: AsyncSession,
        tracked: Sequence[TrackedEvent],
        changes: Sequence[ProfileChange],
        now: datetime,
        *,
        reconsidered: Mapping[uuid.UUID, dict[str, str]] | None = None,
    ) -> None:
        """Apply many tracked events and profile changes, then evaluate each person they touch once: about
        fifteen statements, whatever their number. The outcome is that of applying them one by one in
        arrival order, except that a person who entered and left a segment between them
        (or the reverse) announces nothing: only what changed over the whole run is announced.

        Facts of the two kinds are independent (occurrences vs traits and cart), so applying all the events
        and then all the changes ends as interleaving them would. The events an unmerge moved (listed in a
        change) are moved once all the occurrences are recorded: profile announced each of them before.
        """
        reconsidered = reconsidered or {}
        named = {e.person_id for e in tracked} | {c.person_id for c in changes} | set(reconsidered)
        named |= {c.moved_from for c in changes if c.moved_from is not None}
        if not named:
            return
        await self._repository.lock_persons_by_key(session, named)
        where = await self._lineage.whereabouts(session, named)
        survivors = {p: w.person_id for p, w in where.items() if w.person_id != p}
        if survivors:
            await self._repository.lock_persons_by_key(session, set(survivors.values()))
        forgotten = {p for p, w in where.items() if w.forgotten}
        if forgotten:
            tracked = [e for e in tracked if e.person_id not in forgotten]
            changes = [c for c in changes if c.person_id not in forgotten and c.moved_from not in forgotten]
        # The trace of the latest event or change of each live person: its row keeps it, its enter/exit
        # events carry it.
        traces: dict[uuid.UUID, dict[str, str]] = {}
        for event in tracked:
            traces[survivors.get(event.person_id, event.person_id)] = event.trace_context
        # Persons whose contact verdicts changed: evaluated like the others (known from then on). An entry
        # this evaluation finds continues the trace of the person's own last change where there is one (a
        # consent answer is seldom what made a person enter a segment that has no consent rule), else the
        # verdict's.
        reconsidered_live = {
            survivors.get(person_id, person_id): trace_context
            for person_id, trace_context in reconsidered.items()
            if person_id not in forgotten
        }
        if reconsidered_live:
            stored_traces = await self._repository.trace_contexts(session, list(reconsidered_live))
            for person_id, trace_context in reconsidered_live.items():
                traces.setdefault(person_id, stored_traces.get(person_id) or trace_context)
        await self._repository.ensure_persons(session, traces)
        keep = await self._kept_properties(session, tracked)
        await self._repository.add_occurrences(
            session,
            [
                Occurrence(
                    survivors.get(e.person_id, e.person_id),
                    e.event_id,
                    e.event_type,
                    e.occurred_at,
                    # Whom a redirected event named, so an unmerge of that person can give it back.
                    e.person_id if e.person_id in survivors else None,
                    e.channel,
                    _kept(e, keep.get(e.event_type) or keep.get("")),
                )
                for e in tracked
            ],
        )
        await self._vocabulary.note(
            session,
            PROPERTY,
            (
                f"{e.event_type}.{name}"
                for e in tracked
                for name in _kept(e, keep.get(e.event_type) or keep.get("")) or ()
            ),
        )
        await self._vocabulary.note(session, EVENT_TYPE, (e.event_type for e in tracked))
        await self._take_moved_events(session, changes, survivors, traces)
        # A change about a person merged away is ignored: the survivor's own change follows.
        live_changes = [c for c in changes if c.person_id not in survivors and c.changes_facts]
        changed: dict[uuid.UUID, PersonRecord] = {}
        if live_changes:
            stored = await self._repository.lock_persons(session, sorted({c.person_id for c in live_changes}))
            for change in live_changes:
                person = (
                    changed.get(change.person_id)
                    or stored.get(change.person_id)
                    or PersonRecord(change.person_id)
                )
                updated = _applied(person, change)
                if updated is not person:
                    changed[change.person_id] = updated
                    traces[change.person_id] = updated.trace_context
            await self._repository.save_persons(session, list(changed.values()))
            await self._vocabulary.note(
                session, TRAIT, (name for p in changed.values() for name in (*p.traits, *p.computed_traits))
            )
        await self._evaluator.evaluate_persons(session, traces.keys(), now, trace_contexts=traces)

    async def _kept_properties(
        self, session: AsyncSession, tracked: Sequence[TrackedEvent]
    ) -> dict[str, frozenset[str]]:
        """Per event type some rule filters or sums, the properties its events keep: those the rules name.
        Nothing is kept of other types, or of properties no rule names."""
        if not any(e.properties for e in tracked):
            return {}
        needs = self._catalog.requirements(await self._catalog.segments(session))
        if not needs.properties:
            return {}
        return {event_type: needs.properties for event_type in needs.detailed}

    async def _take_moved_events(
        self,
        session: AsyncSession,
        changes: Sequence[ProfileChange],
        survivors: Mapping[uuid.UUID, uuid.UUID],
        traces: dict[uuid.UUID, dict[str, str]],
    ) -> None:
        """Follow the events profile moved on an unmerge: their occurrences still on the person profile took
        them from (or where that person was merged since) go to the person profile gave them to (or where
        it leads); both are then evaluated (added to `traces`). Occurrences already there, or not held,
        change nothing.

        Applied after the run's occurrences are recorded: they include every moved event profile announced
        before its change.
        """
        for change in changes:
            if change.moved_from is None or not change.moved_event_ids:
                continue
            person_id = survivors.get(change.person_id, change.person_id)
            holders = sorted({change.moved_from, survivors.get(change.moved_from, change.moved_from)})
            taken = await self._repository.take_events(
                session, holders, person_id, change.moved_event_ids, named=change.person_id
            )
            if not taken:
                continue
            await self._repository.ensure_persons(session, {person_id: change.trace_context})
            traces[person_id] = change.trace_context
            for holder in taken:
                traces.setdefault(holder, change.trace_context)


def _applied(person: PersonRecord, change: ProfileChange) -> PersonRecord:
    """The person's facts after a profile change; the same record when it changes nothing.

    Traits and cart on one side, computed traits on the other, are announced apart (a change of traits and
    one of computed traits may arrive in either order), so each side keeps its own time of change and a
    change older than what its side holds is ignored for that side.
    """
    updated = person
    facts_changed = False
    if (change.traits is not None or change.cart_units is not None) and (
        person.facts_changed_at is None or change.changed_at >= person.facts_changed_at
    ):
        updated = replace(
            updated,
            traits=dict(change.traits) if change.traits is not None else person.traits,
            cart_units=change.cart_units if change.cart_units is not None else person.cart_units,
            facts_changed_at=change.changed_at,
        )
        facts_changed = True
    if change.computed_traits is not None and (
        person.computed_changed_at is None or change.changed_at >= person.computed_changed_at
    ):
        updated = replace(
            updated, computed_traits=dict(change.computed_traits), computed_changed_at=change.changed_at
        )
    # The trace a later entry continues is that of the person's own change (traits, the cart); a
    # recomputation of computed traits is profile's derived work, in a trace of its own job, and takes the
    # trace only when nothing else gave one.
    if updated is not person and (facts_changed or not person.trace_context):
        updated = replace(updated, trace_context=change.trace_context)
    return updated


def _kept(event: TrackedEvent, names: frozenset[str] | None) -> dict[str, Any] | None:
    """The properties of the event a rule names (None when it keeps none)."""
    if not names or not event.properties:
        return None
    kept = {
        name: json_format.MessageToDict(event.properties[name]) for name in names if name in event.properties
    }
    return kept or None
