"""Event occurrences and the latest time of each type per person."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_segmentation.models import EventOccurrenceRow, LastEventRow
from omni_segmentation.rules import EventDetail


@dataclass(frozen=True)
class Occurrence:
    """One tracked event as segmentation keeps it: for whom it counts, and whom the event named when that
    person had been merged into the one it counts for (None: the same person)."""

    person_id: uuid.UUID
    event_id: str
    event_type: str
    occurred_at: datetime
    origin_id: uuid.UUID | None = None
    channel: int = 0
    properties: dict[str, Any] | None = None


# Statements over arrays, one per batch of persons or events, whatever their number (an IN list would be
# a parameter per person, compiled and sent anew each time).
_EVENT_TIMES = sa.text(
    "SELECT person_id, event_type, occurred_at FROM event_occurrences "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[])) "
    "AND occurred_at >= :since ORDER BY occurred_at"
)
_LAST_EVENTS = sa.text(
    "SELECT person_id, event_type, last_at FROM person_last_events "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[]))"
)
_ADD_OCCURRENCES = sa.text(
    "INSERT INTO event_occurrences (person_id, event_id, event_type, occurred_at, origin_person_id, channel, "
    "properties) "
    "SELECT * FROM unnest(CAST(:persons AS uuid[]), CAST(:ids AS text[]), CAST(:types AS text[]), "
    "CAST(:ats AS timestamptz[]), CAST(:origins AS uuid[]), CAST(:channels AS smallint[]), "
    "CAST(:properties AS jsonb[])) ON CONFLICT DO NOTHING"
)
_EVENT_DETAILS = sa.text(
    "SELECT person_id, event_type, occurred_at, channel, properties FROM event_occurrences "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[])) "
    "AND occurred_at >= :since ORDER BY occurred_at"
)
_RAISE_LAST_EVENTS = sa.text(
    "INSERT INTO person_last_events (person_id, event_type, last_at, first_at) "
    "SELECT * FROM unnest(CAST(:persons AS uuid[]), CAST(:types AS text[]), CAST(:ats AS timestamptz[]), "
    "CAST(:firsts AS timestamptz[])) "
    "ON CONFLICT (person_id, event_type) DO UPDATE "
    "SET last_at = greatest(person_last_events.last_at, excluded.last_at), "
    "first_at = least(person_last_events.first_at, excluded.first_at)"
)
_ALL_EVENT_DETAILS = sa.text(
    "SELECT person_id, occurred_at, channel, properties FROM event_occurrences "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND occurred_at >= :since ORDER BY occurred_at"
)
_FIRST_EVENTS = sa.text(
    "SELECT person_id, event_type, first_at FROM person_last_events "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND event_type = ANY(CAST(:types AS text[])) "
    "AND first_at IS NOT NULL"
)
_FIRST_SEEN = sa.text(
    "SELECT person_id, min(first_at) AS first_at FROM person_last_events "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) AND first_at IS NOT NULL GROUP BY person_id"
)


class EventQueries:
    """Queries on event occurrences. Every method runs in the caller's session (and transaction)."""

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
                "origins": [o.origin_id for o in occurrences],
                "channels": [o.channel for o in occurrences],
                "properties": [
                    json_text(o.properties) if o.properties is not None else None for o in occurrences
                ],
            },
        )
        # One row per (person, type): ON CONFLICT DO UPDATE may not touch a row twice in one statement.
        latest: dict[tuple[uuid.UUID, str], datetime] = {}
        first: dict[tuple[uuid.UUID, str], datetime] = {}
        for o in occurrences:
            key = (o.person_id, o.event_type)
            if key not in latest or o.occurred_at > latest[key]:
                latest[key] = o.occurred_at
            if key not in first or o.occurred_at < first[key]:
                first[key] = o.occurred_at
        keys = sorted(latest)
        await session.execute(
            _RAISE_LAST_EVENTS,
            {
                "persons": [k[0] for k in keys],
                "types": [k[1] for k in keys],
                "ats": [latest[k] for k in keys],
                "firsts": [first[k] for k in keys],
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

    async def event_details(
        self,
        session: AsyncSession,
        person_ids: Sequence[uuid.UUID],
        event_types: Sequence[str],
        since: datetime,
    ) -> dict[uuid.UUID, dict[str, list[EventDetail]]]:
        """Per person and type, the persons' occurrences of those types at or after since, ascending, with
        their channels and kept properties; of every type under "", when "" is asked for."""
        result: dict[uuid.UUID, dict[str, list[EventDetail]]] = {}
        if not event_types or not person_ids:
            return result
        named = [t for t in event_types if t]
        if named:
            rows = await session.execute(
                _EVENT_DETAILS, {"ids": list(person_ids), "types": named, "since": since}
            )
            for row in rows:
                result.setdefault(row.person_id, {}).setdefault(row.event_type, []).append(
                    EventDetail(row.occurred_at, row.channel, row.properties or {})
                )
        if "" in event_types:  # every type, under ""
            rows = await session.execute(_ALL_EVENT_DETAILS, {"ids": list(person_ids), "since": since})
            for row in rows:
                result.setdefault(row.person_id, {}).setdefault("", []).append(
                    EventDetail(row.occurred_at, row.channel, row.properties or {})
                )
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

    async def first_events(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID], event_types: Sequence[str]
    ) -> dict[uuid.UUID, dict[str, datetime]]:
        """Per person, the first occurrence of each of the event types known; under "" the first of any
        type, when "" is asked for."""
        result: dict[uuid.UUID, dict[str, datetime]] = {}
        if not event_types or not person_ids:
            return result
        named = [t for t in event_types if t]
        if named:
            rows = await session.execute(_FIRST_EVENTS, {"ids": list(person_ids), "types": named})
            for row in rows:
                result.setdefault(row.person_id, {})[row.event_type] = row.first_at
        if "" in event_types:
            for row in await session.execute(_FIRST_SEEN, {"ids": list(person_ids)}):
                result.setdefault(row.person_id, {})[""] = row.first_at
        return result

    async def move_events(
        self, session: AsyncSession, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Give the merged persons' event occurrences and last-seen times to the survivor; each occurrence
        keeps the person its event named (the merged one, unless it had come from further back), so an
        unmerge can give it back."""
        occurrences = sa.select(
            sa.literal(survivor_id, sa.Uuid),
            EventOccurrenceRow.event_id,
            EventOccurrenceRow.event_type,
            EventOccurrenceRow.occurred_at,
            sa.func.coalesce(EventOccurrenceRow.origin_person_id, EventOccurrenceRow.person_id),
            EventOccurrenceRow.channel,
            EventOccurrenceRow.properties,
        ).where(EventOccurrenceRow.person_id.in_(merged_ids))
        await session.execute(
            insert(EventOccurrenceRow)
            .from_select(
                [
                    "person_id",
                    "event_id",
                    "event_type",
                    "occurred_at",
                    "origin_person_id",
                    "channel",
                    "properties",
                ],
                occurrences,
            )
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
                sa.func.min(LastEventRow.first_at),
            )
            .where(LastEventRow.person_id.in_(merged_ids))
            .group_by(LastEventRow.event_type)
        )
        statement = insert(LastEventRow).from_select(
            ["person_id", "event_type", "last_at", "first_at"], latest
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[LastEventRow.person_id, LastEventRow.event_type],
                set_={
                    "last_at": sa.func.greatest(LastEventRow.last_at, statement.excluded.last_at),
                    "first_at": sa.func.least(LastEventRow.first_at, statement.excluded.first_at),
                },
            )
        )
        await session.execute(sa.delete(LastEventRow).where(LastEventRow.person_id.in_(merged_ids)))

    async def give_back_events(
        self,
        session: AsyncSession,
        survivor_id: uuid.UUID,
        restored_id: uuid.UUID,
        origin_ids: Sequence[uuid.UUID],
    ) -> int:
        """Move the survivor's occurrences whose events named one of origin_ids to the restored person (an
        unmerge); return how many moved. Last-seen times follow as in `_move_occurrences`."""
        taken = await self._move_occurrences(
            session,
            sa.and_(
                EventOccurrenceRow.person_id == survivor_id,
                EventOccurrenceRow.origin_person_id.in_(origin_ids),
            ),
            restored_id,
            named=restored_id,
        )
        return sum(taken.values())

    async def take_events(
        self,
        session: AsyncSession,
        holders: Sequence[uuid.UUID],
        person_id: uuid.UUID,
        event_ids: Sequence[str],
        *,
        named: uuid.UUID,
    ) -> dict[uuid.UUID, int]:
        """Move the holders' occurrences of these events to person_id (profile moved the events to `named`,
        which leads to person_id here); return how many each holder gave. Occurrences held by nobody of
        them are left alone. Last-seen times follow as in `_move_occurrences`."""
        if not holders or not event_ids:
            return {}
        return await self._move_occurrences(
            session,
            sa.and_(
                EventOccurrenceRow.person_id.in_(holders),
                EventOccurrenceRow.event_id.in_(event_ids),
                EventOccurrenceRow.person_id != person_id,
            ),
            person_id,
            named=named,
        )

    async def _move_occurrences(
        self,
        session: AsyncSession,
        where: sa.ColumnElement[bool],
        person_id: uuid.UUID,
        *,
        named: uuid.UUID,
    ) -> dict[uuid.UUID, int]:
        """Move the occurrences matching `where` to person_id, as events given to `named` (the same person,
        or one merged into it since, which the occurrences then name as their origin); return how many
        each former holder gave.

        The receiver's last-seen times rise to the occurrences it got. A holder's time of a type it had only
        through them falls to its latest remaining occurrence of that type, or goes when none remains; a
        time older than every occurrence it gave stays, since it may be its own.
        """
        rows = (
            await session.execute(
                sa.delete(EventOccurrenceRow)
                .where(where)
                .returning(
                    EventOccurrenceRow.person_id,
                    EventOccurrenceRow.event_id,
                    EventOccurrenceRow.event_type,
                    EventOccurrenceRow.occurred_at,
                    EventOccurrenceRow.origin_person_id,
                    EventOccurrenceRow.channel,
                    EventOccurrenceRow.properties,
                )
            )
        ).all()
        if not rows:
            return {}
        await self.add_occurrences(
            session,
            [
                Occurrence(
                    person_id,
                    row.event_id,
                    row.event_type,
                    row.occurred_at,
                    _origin(row.origin_person_id, named, person_id),
                    row.channel,
                    row.properties,
                )
                for row in rows
            ],
        )
        given: dict[uuid.UUID, dict[str, tuple[datetime, datetime]]] = {}
        for row in rows:
            types = given.setdefault(row.person_id, {})
            earliest, latest = types.get(row.event_type, (row.occurred_at, row.occurred_at))
            types[row.event_type] = (min(earliest, row.occurred_at), max(latest, row.occurred_at))
        for holder, spans in given.items():
            await self._lower_last_events(session, holder, spans)
        counts: dict[uuid.UUID, int] = {}
        for row in rows:
            counts[row.person_id] = counts.get(row.person_id, 0) + 1
        return counts

    async def _lower_last_events(
        self, session: AsyncSession, holder: uuid.UUID, given: dict[str, tuple[datetime, datetime]]
    ) -> None:
        """After a holder gave occurrences away (the earliest and latest of each type given), lower its
        last-seen times of the types it had only through them, and raise its first-seen times that came from
        them: both to its remaining occurrences of the type (the row goes when none remains and its latest
        was given; a first time nothing remaining can tell becomes unknown)."""
        rows = await session.execute(
            sa.select(LastEventRow.event_type, LastEventRow.last_at, LastEventRow.first_at).where(
                LastEventRow.person_id == holder, LastEventRow.event_type.in_(sorted(given))
            )
        )
        kept = {row.event_type: (row.last_at, row.first_at) for row in rows}
        touched = sorted(
            t
            for t, (last, first) in kept.items()
            if last <= given[t][1] or (first is not None and first >= given[t][0])
        )
        if not touched:
            return
        remaining = await session.execute(
            sa.select(
                EventOccurrenceRow.event_type,
                sa.func.min(EventOccurrenceRow.occurred_at).label("first"),
                sa.func.max(EventOccurrenceRow.occurred_at).label("last"),
            )
            .where(EventOccurrenceRow.person_id == holder, EventOccurrenceRow.event_type.in_(touched))
            .group_by(EventOccurrenceRow.event_type)
        )
        left = {row.event_type: (row.first, row.last) for row in remaining}
        await session.execute(
            sa.delete(LastEventRow).where(
                LastEventRow.person_id == holder, LastEventRow.event_type.in_(touched)
            )
        )
        values = []
        for event_type in touched:
            last, first = kept[event_type]
            earliest_left, latest_left = left.get(event_type, (None, None))
            new_last = last if last > given[event_type][1] else latest_left
            new_first = first if first is not None and first < given[event_type][0] else earliest_left
            if new_last is not None:
                values.append(
                    {
                        "person_id": holder,
                        "event_type": event_type,
                        "last_at": new_last,
                        "first_at": new_first,
                    }
                )
        if values:
            await session.execute(insert(LastEventRow).values(values))

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


def _origin(origin: uuid.UUID | None, named: uuid.UUID, person_id: uuid.UUID) -> uuid.UUID | None:
    """The origin of an occurrence moved to person_id as an event of `named`: the person its event named
    when that is not the one it now counts for (an origin equal to `named` is where the event now is; when
    `named` was merged into person_id, the event names `named`, unless it named someone before)."""
    if origin == named:
        origin = None
    if named != person_id:
        origin = origin or named
    return None if origin == person_id else origin
