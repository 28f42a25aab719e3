"""All of segmentation's SQL: segments, the per-person facts, event occurrences, memberships and backfills."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_segmentation.models import (
    BackfillRow,
    EventOccurrenceRow,
    LastEventRow,
    MembershipRow,
    MergedPersonRow,
    PersonRow,
    SegmentRow,
)
from omni_segmentation.records import BackfillRecord, MembershipRecord, PersonRecord, SegmentRecord


def _segment(row: SegmentRow) -> SegmentRecord:
    return SegmentRecord(row.id, row.name, row.description, row.condition, row.created_at)


def _person(row: Any) -> PersonRecord:
    return PersonRecord(
        row.person_id, row.traits, row.cart_units, row.trace_context, row.facts_changed_at, row.next_check_at
    )


@dataclass(frozen=True)
class Occurrence:
    """One tracked event as segmentation keeps it."""

    person_id: uuid.UUID
    event_id: str
    event_type: str
    occurred_at: datetime


# Statements over arrays, one per batch of persons or events, whatever their number (an IN list would be
# a parameter per person, compiled and sent anew each time).
_SURVIVORS = sa.text(
    "SELECT person_id, survivor_id FROM merged_persons WHERE person_id = ANY(CAST(:ids AS uuid[]))"
)
_LOCK_PERSONS = sa.text(
    "SELECT person_id, traits, cart_units, trace_context, facts_changed_at, next_check_at FROM persons "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) ORDER BY person_id FOR UPDATE"
)
_EVENT_TIMES = sa.text(
    "SELECT person_id, event_type, occurred_at FROM event_occurrences "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[])) "
    "AND occurred_at >= :since ORDER BY occurred_at"
)
_LAST_EVENTS = sa.text(
    "SELECT person_id, event_type, last_at FROM person_last_events "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[]))"
)
_MEMBERSHIPS = sa.text(
    "SELECT person_id, segment_id, entered_at FROM memberships WHERE person_id = ANY(CAST(:ids AS uuid[]))"
)
_LOCK_KEYS = sa.text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")
_ENSURE_PERSONS = sa.text(
    "INSERT INTO persons (person_id, trace_context) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:traces AS jsonb[])) "
    "ON CONFLICT (person_id) DO UPDATE SET trace_context = excluded.trace_context, updated_at = now()"
)
_SAVE_PERSONS = sa.text(
    "INSERT INTO persons (person_id, traits, cart_units, trace_context, facts_changed_at) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:traits AS jsonb[]), CAST(:units AS bigint[]), "
    "CAST(:traces AS jsonb[]), CAST(:changed AS timestamptz[])) "
    "ON CONFLICT (person_id) DO UPDATE SET traits = excluded.traits, cart_units = excluded.cart_units, "
    "trace_context = excluded.trace_context, facts_changed_at = excluded.facts_changed_at, updated_at = now()"
)
_SET_NEXT_CHECKS = sa.text(
    "UPDATE persons AS p SET next_check_at = u.at "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS u(id, at) WHERE p.person_id = u.id"
)
_ADD_OCCURRENCES = sa.text(
    "INSERT INTO event_occurrences (person_id, event_id, event_type, occurred_at) "
    "SELECT * FROM unnest(CAST(:persons AS uuid[]), CAST(:ids AS text[]), CAST(:types AS text[]), "
    "CAST(:ats AS timestamptz[])) ON CONFLICT DO NOTHING"
)
_RAISE_LAST_EVENTS = sa.text(
    "INSERT INTO person_last_events (person_id, event_type, last_at) "
    "SELECT * FROM unnest(CAST(:persons AS uuid[]), CAST(:types AS text[]), CAST(:ats AS timestamptz[])) "
    "ON CONFLICT (person_id, event_type) DO UPDATE "
    "SET last_at = greatest(person_last_events.last_at, excluded.last_at)"
)
_ADD_MEMBERSHIPS = sa.text(
    "INSERT INTO memberships (segment_id, person_id, entered_at) "
    "SELECT s, p, CAST(:at AS timestamptz) FROM unnest(CAST(:segments AS uuid[]), CAST(:persons AS uuid[])) "
    "AS t(s, p) ON CONFLICT DO NOTHING"
)
_REMOVE_MEMBERSHIPS = sa.text(
    "DELETE FROM memberships AS m USING unnest(CAST(:persons AS uuid[]), CAST(:segments AS uuid[])) "
    "AS t(p, s) WHERE m.person_id = t.p AND m.segment_id = t.s"
)


def lock_key(person_id: uuid.UUID) -> int:
    """The advisory lock key of a person: 63 random bits of its UUIDv7, as a signed bigint."""
    return person_id.int & ((1 << 63) - 1)


class Repository:
    """Queries on segmentation's database; every method runs in the caller's session (and transaction)."""

    # -- segments ----------------------------------------------------------------------------------------

    async def insert_segment(self, session: AsyncSession, segment: SegmentRecord) -> bool:
        """Insert a segment; False (and nothing written) when its name is taken."""
        inserted = await session.scalar(
            insert(SegmentRow)
            .values(
                id=segment.id,
                name=segment.name,
                description=segment.description,
                condition=segment.condition,
                created_at=segment.created_at,
            )
            .on_conflict_do_nothing(index_elements=[SegmentRow.name])
            .returning(SegmentRow.id)
        )
        return inserted is not None

    async def get_segment(self, session: AsyncSession, segment_id: uuid.UUID) -> SegmentRecord | None:
        """The segment with that id, if any."""
        row = await session.get(SegmentRow, segment_id)
        return _segment(row) if row is not None else None

    async def list_segments(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int
    ) -> list[SegmentRecord]:
        """Up to limit segments with ids after `after`, oldest first (ids are time-ordered)."""
        query = sa.select(SegmentRow).order_by(SegmentRow.id).limit(limit)
        if after is not None:
            query = query.where(SegmentRow.id > after)
        return [_segment(row) for row in await session.scalars(query)]

    async def segment_heads(self, session: AsyncSession) -> list[tuple[uuid.UUID, str]]:
        """Every segment's id and name, oldest first."""
        rows = await session.execute(sa.select(SegmentRow.id, SegmentRow.name).order_by(SegmentRow.id))
        return [(row.id, row.name) for row in rows]

    async def segment_conditions(
        self, session: AsyncSession, segment_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        """The stored conditions of the given segments."""
        rows = await session.execute(
            sa.select(SegmentRow.id, SegmentRow.condition).where(SegmentRow.id.in_(segment_ids))
        )
        return {row.id: row.condition for row in rows}

    # -- persons -----------------------------------------------------------------------------------------

    async def lock_persons_by_key(self, session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> None:
        """Serialise work on these persons until the transaction ends (advisory locks, in a fixed order,
        one statement: the keys are locked in the order the array holds them)."""
        keys = sorted({lock_key(p) for p in person_ids})
        if keys:
            await session.execute(_LOCK_KEYS, {"keys": keys})

    async def survivors_of(
        self, session: AsyncSession, person_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The persons among these that were merged, each with the person it was merged into."""
        ids = list(set(person_ids))
        if not ids:
            return {}
        rows = await session.execute(_SURVIVORS, {"ids": ids})
        return {row.person_id: row.survivor_id for row in rows}

    async def survivor_of(self, session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID | None:
        """The person this one was merged into, if it was."""
        result: uuid.UUID | None = await session.scalar(
            sa.select(MergedPersonRow.survivor_id).where(MergedPersonRow.person_id == person_id)
        )
        return result

    async def lock_persons(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, PersonRecord]:
        """The known persons among person_ids, row-locked in id order."""
        if not person_ids:
            return {}
        rows = await session.execute(_LOCK_PERSONS, {"ids": list(person_ids)})
        return {row.person_id: _person(row) for row in rows}

    async def save_person(self, session: AsyncSession, person: PersonRecord) -> None:
        """Write a person's facts (creating the row if needed)."""
        values = {
            "traits": person.traits,
            "cart_units": person.cart_units,
            "trace_context": person.trace_context,
            "facts_changed_at": person.facts_changed_at,
            "updated_at": sa.func.now(),
        }
        await session.execute(
            insert(PersonRow)
            .values(person_id=person.person_id, **values)
            .on_conflict_do_update(index_elements=[PersonRow.person_id], set_=values)
        )

    async def ensure_persons(
        self, session: AsyncSession, trace_contexts: Mapping[uuid.UUID, dict[str, str]]
    ) -> None:
        """Create the persons not known yet and remember, for each, the trace of the event that just changed
        them (one statement, in id order)."""
        if not trace_contexts:
            return
        ids = sorted(trace_contexts)
        await session.execute(
            _ENSURE_PERSONS, {"ids": ids, "traces": [json_text(trace_contexts[p]) for p in ids]}
        )

    async def save_persons(self, session: AsyncSession, persons: Sequence[PersonRecord]) -> None:
        """Write persons' facts, creating the rows not there yet (one statement, in id order)."""
        if not persons:
            return
        ordered = sorted(persons, key=lambda p: p.person_id)
        await session.execute(
            _SAVE_PERSONS,
            {
                "ids": [p.person_id for p in ordered],
                "traits": [json_text(p.traits) for p in ordered],
                "units": [p.cart_units for p in ordered],
                "traces": [json_text(p.trace_context) for p in ordered],
                "changed": [p.facts_changed_at for p in ordered],
            },
        )

    async def delete_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Forget the facts rows of these persons."""
        await session.execute(sa.delete(PersonRow).where(PersonRow.person_id.in_(person_ids)))

    async def set_next_check(self, session: AsyncSession, person_id: uuid.UUID, at: datetime | None) -> None:
        """When the clock should re-evaluate the person (None: only when an event arrives)."""
        await session.execute(
            sa.update(PersonRow).where(PersonRow.person_id == person_id).values(next_check_at=at)
        )

    async def due_persons(
        self, session: AsyncSession, now: datetime, limit: int
    ) -> list[tuple[uuid.UUID, dict[str, str]]]:
        """Persons whose next check is due, locked; rows another transaction holds are skipped."""
        rows = await session.execute(
            sa.select(PersonRow.person_id, PersonRow.trace_context)
            .where(PersonRow.next_check_at <= now)
            .order_by(PersonRow.next_check_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [(row.person_id, row.trace_context) for row in rows]

    async def record_merge(
        self, session: AsyncSession, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Remember that merged_ids now lead to survivor_id, also for persons merged into them earlier."""
        await session.execute(
            sa.update(MergedPersonRow)
            .where(MergedPersonRow.survivor_id.in_(merged_ids))
            .values(survivor_id=survivor_id)
        )
        statement = insert(MergedPersonRow).values(
            [{"person_id": m, "survivor_id": survivor_id} for m in merged_ids]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[MergedPersonRow.person_id], set_={"survivor_id": survivor_id}
            )
        )

    async def set_next_checks(
        self, session: AsyncSession, checks: Mapping[uuid.UUID, datetime | None]
    ) -> None:
        """When the clock should re-evaluate each of these persons (None: only when an event arrives)."""
        if not checks:
            return
        ids = sorted(checks)
        await session.execute(_SET_NEXT_CHECKS, {"ids": ids, "ats": [checks[p] for p in ids]})

    async def erase_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Delete everything held about these persons: facts, occurrences, last-seen times, memberships and
        merge aliases (both ways). A backfill cursor on one of them steps back to the live person before it."""
        ids = list(person_ids)
        for table in (EventOccurrenceRow, LastEventRow, MembershipRow, PersonRow):
            await session.execute(sa.delete(table).where(table.person_id.in_(ids)))
        await session.execute(
            sa.delete(MergedPersonRow).where(
                sa.or_(MergedPersonRow.person_id.in_(ids), MergedPersonRow.survivor_id.in_(ids))
            )
        )
        before = (
            sa.select(PersonRow.person_id)
            .where(PersonRow.person_id < BackfillRow.after_person_id)
            .order_by(PersonRow.person_id.desc())
            .limit(1)
            .scalar_subquery()
        )
        await session.execute(
            sa.update(BackfillRow).where(BackfillRow.after_person_id.in_(ids)).values(after_person_id=before)
        )

    # -- events ------------------------------------------------------------------------------------------

    async def add_occurrences(self, session: AsyncSession, occurrences: Sequence[Occurrence]) -> None:
        """Record event occurrences and raise their persons' last-seen time of each type (two statements)."""
        if not occurrences:
            return
        await session.execute(
            _ADD_OCCURRENCES,
            {
                "persons": [o.person_id for o in occurrences],
                "ids": [o.event_id for o in occurrences],
                "types": [o.event_type for o in occurrences],
                "ats": [o.occurred_at for o in occurrences],
            },
        )
        # One row per (person, type): ON CONFLICT DO UPDATE may not touch a row twice in one statement.
        latest: dict[tuple[uuid.UUID, str], datetime] = {}
        for o in occurrences:
            key = (o.person_id, o.event_type)
            if key not in latest or o.occurred_at > latest[key]:
                latest[key] = o.occurred_at
        keys = sorted(latest)
        await session.execute(
            _RAISE_LAST_EVENTS,
            {
                "persons": [k[0] for k in keys],
                "types": [k[1] for k in keys],
                "ats": [latest[k] for k in keys],
            },
        )

    async def event_times(
        self,
        session: AsyncSession,
        person_ids: Sequence[uuid.UUID],
        event_types: Sequence[str],
        since: datetime,
    ) -> dict[uuid.UUID, dict[str, list[datetime]]]:
        """Per person and type, the ascending instants of the persons' events of those types at or after
        since."""
        result: dict[uuid.UUID, dict[str, list[datetime]]] = {}
        if not event_types or not person_ids:
            return result
        rows = await session.execute(
            _EVENT_TIMES, {"ids": list(person_ids), "types": list(event_types), "since": since}
        )
        for row in rows:
            result.setdefault(row.person_id, {}).setdefault(row.event_type, []).append(row.occurred_at)
        return result

    async def last_events(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID], event_types: Sequence[str]
    ) -> dict[uuid.UUID, dict[str, datetime]]:
        """Per person, the latest occurrence of each of the event types seen."""
        result: dict[uuid.UUID, dict[str, datetime]] = {}
        if not event_types or not person_ids:
            return result
        rows = await session.execute(_LAST_EVENTS, {"ids": list(person_ids), "types": list(event_types)})
        for row in rows:
            result.setdefault(row.person_id, {})[row.event_type] = row.last_at
        return result

    async def move_events(
        self, session: AsyncSession, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Give the merged persons' event occurrences and last-seen times to the survivor."""
        occurrences = sa.select(
            sa.literal(survivor_id, sa.Uuid),
            EventOccurrenceRow.event_id,
            EventOccurrenceRow.event_type,
            EventOccurrenceRow.occurred_at,
        ).where(EventOccurrenceRow.person_id.in_(merged_ids))
        await session.execute(
            insert(EventOccurrenceRow)
            .from_select(["person_id", "event_id", "event_type", "occurred_at"], occurrences)
            .on_conflict_do_nothing()
        )
        await session.execute(
            sa.delete(EventOccurrenceRow).where(EventOccurrenceRow.person_id.in_(merged_ids))
        )
        latest = (
            sa.select(
                sa.literal(survivor_id, sa.Uuid),
                LastEventRow.event_type,
                sa.func.max(LastEventRow.last_at),
            )
            .where(LastEventRow.person_id.in_(merged_ids))
            .group_by(LastEventRow.event_type)
        )
        statement = insert(LastEventRow).from_select(["person_id", "event_type", "last_at"], latest)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[LastEventRow.person_id, LastEventRow.event_type],
                set_={"last_at": sa.func.greatest(LastEventRow.last_at, statement.excluded.last_at)},
            )
        )
        await session.execute(sa.delete(LastEventRow).where(LastEventRow.person_id.in_(merged_ids)))

    async def purge_occurrences(self, session: AsyncSession, before: datetime, limit: int) -> int:
        """Delete up to limit occurrences older than before; return how many went."""
        doomed = (
            sa.select(EventOccurrenceRow.person_id, EventOccurrenceRow.event_id)
            .where(EventOccurrenceRow.occurred_at < before)
            .limit(limit)
        )
        result = await session.execute(
            sa.delete(EventOccurrenceRow).where(
                sa.tuple_(EventOccurrenceRow.person_id, EventOccurrenceRow.event_id).in_(doomed)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # -- memberships -------------------------------------------------------------------------------------

    async def memberships_of(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[uuid.UUID, datetime]]:
        """Per person, the segments they are in, with when they entered."""
        result: dict[uuid.UUID, dict[uuid.UUID, datetime]] = {}
        if not person_ids:
            return result
        rows = await session.execute(_MEMBERSHIPS, {"ids": list(person_ids)})
        for row in rows:
            result.setdefault(row.person_id, {})[row.segment_id] = row.entered_at
        return result

    async def person_memberships(self, session: AsyncSession, person_id: uuid.UUID) -> list[MembershipRecord]:
        """The person's memberships with segment names, in the order they entered."""
        rows = await session.execute(
            sa.select(MembershipRow.segment_id, SegmentRow.name, MembershipRow.entered_at)
            .join(SegmentRow, SegmentRow.id == MembershipRow.segment_id)
            .where(MembershipRow.person_id == person_id)
            .order_by(MembershipRow.entered_at, MembershipRow.segment_id)
        )
        return [MembershipRecord(row.segment_id, row.name, row.entered_at) for row in rows]

    async def add_membership_pairs(
        self, session: AsyncSession, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], entered_at: datetime
    ) -> None:
        """Make each (person, segment) pair a membership, in one statement."""
        if pairs:
            await session.execute(
                _ADD_MEMBERSHIPS,
                {"persons": [p for p, _ in pairs], "segments": [s for _, s in pairs], "at": entered_at},
            )

    async def remove_membership_pairs(
        self, session: AsyncSession, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> None:
        """End each (person, segment) membership, in one statement."""
        if pairs:
            await session.execute(
                _REMOVE_MEMBERSHIPS, {"persons": [p for p, _ in pairs], "segments": [s for _, s in pairs]}
            )

    async def remove_memberships(
        self,
        session: AsyncSession,
        person_ids: Sequence[uuid.UUID],
        segment_ids: Sequence[uuid.UUID] | None = None,
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """End memberships of the persons (of the given segments, or all); return the (person, segment) pairs."""
        statement = sa.delete(MembershipRow).where(MembershipRow.person_id.in_(person_ids))
        if segment_ids is not None:
            statement = statement.where(MembershipRow.segment_id.in_(segment_ids))
        rows = await session.execute(statement.returning(MembershipRow.person_id, MembershipRow.segment_id))
        return [(row.person_id, row.segment_id) for row in rows]

    # -- backfills ---------------------------------------------------------------------------------------

    async def add_backfill(
        self, session: AsyncSession, segment_id: uuid.UUID, trace_context: dict[str, str]
    ) -> None:
        """Schedule the evaluation of a new segment for every person known so far."""
        await session.execute(
            insert(BackfillRow).values(
                segment_id=segment_id, after_person_id=None, trace_context=trace_context
            )
        )

    async def next_backfill(self, session: AsyncSession) -> BackfillRecord | None:
        """The oldest pending backfill no one else is working on, locked."""
        result = await session.execute(
            sa.select(BackfillRow.segment_id, BackfillRow.after_person_id, BackfillRow.trace_context)
            .order_by(BackfillRow.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = result.first()
        return (
            BackfillRecord(row.segment_id, row.after_person_id, row.trace_context)
            if row is not None
            else None
        )

    async def lock_persons_after(
        self, session: AsyncSession, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, dict[str, str]]]:
        """The next persons in id order after `after`, row-locked in that order."""
        query = (
            sa.select(PersonRow.person_id, PersonRow.trace_context).order_by(PersonRow.person_id).limit(limit)
        )
        if after is not None:
            query = query.where(PersonRow.person_id > after)
        rows = await session.execute(query.with_for_update())
        return [(row.person_id, row.trace_context) for row in rows]

    async def advance_backfill(
        self, session: AsyncSession, segment_id: uuid.UUID, after: uuid.UUID | None
    ) -> None:
        """Move the backfill's cursor; None finishes (deletes) it."""
        if after is None:
            await session.execute(sa.delete(BackfillRow).where(BackfillRow.segment_id == segment_id))
        else:
            await session.execute(
                sa.update(BackfillRow)
                .where(BackfillRow.segment_id == segment_id)
                .values(after_person_id=after)
            )
