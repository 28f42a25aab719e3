"""The per-person facts, advisory locks and erasure (where merged ids lead is omni_kit.lineage's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import json_text
from omni_kit.lineage import lock_persons
from omni_kit.scheduler import cancel, schedule_many
from omni_segmentation.jobs import PERSON_CHECK
from omni_segmentation.models import (
    BackfillRow,
    EventOccurrenceRow,
    LastEventRow,
    MembershipRow,
    PersonRow,
    SegmentExitRow,
)
from omni_segmentation.records import PersonRecord


def _person(row: Any) -> PersonRecord:
    return PersonRecord(
        row.person_id,
        row.traits,
        row.cart_units,
        row.trace_context,
        row.facts_changed_at,
        row.next_check_at,
        row.computed_traits,
        row.computed_changed_at,
    )


# Statements over arrays, one per batch of persons or events, whatever their number (an IN list would be
# a parameter per person, compiled and sent anew each time).
_LOCK_PERSONS = sa.text(
    "SELECT person_id, traits, cart_units, trace_context, facts_changed_at, next_check_at, computed_traits, "
    "computed_changed_at FROM persons "
    "WHERE person_id = ANY(CAST(:ids AS uuid[])) ORDER BY person_id FOR UPDATE"
)
_PERSONS = sa.text(
    "SELECT person_id, traits, cart_units, trace_context, facts_changed_at, next_check_at, computed_traits, "
    "computed_changed_at FROM persons WHERE person_id = ANY(CAST(:ids AS uuid[]))"
)
_PERSONS_AFTER = sa.text(
    "SELECT person_id, traits, cart_units, trace_context, facts_changed_at, next_check_at, computed_traits, "
    "computed_changed_at FROM persons WHERE person_id > :after ORDER BY person_id LIMIT :limit"
)
_ENSURE_PERSONS = sa.text(
    "INSERT INTO persons (person_id, trace_context) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:traces AS jsonb[])) "
    "ON CONFLICT (person_id) DO UPDATE SET trace_context = excluded.trace_context, updated_at = now()"
)
_SAVE_PERSONS = sa.text(
    "INSERT INTO persons (person_id, traits, cart_units, trace_context, facts_changed_at, computed_traits, "
    "computed_changed_at) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:traits AS jsonb[]), CAST(:units AS bigint[]), "
    "CAST(:traces AS jsonb[]), CAST(:changed AS timestamptz[]), CAST(:computed AS jsonb[]), "
    "CAST(:computed_changed AS timestamptz[])) "
    "ON CONFLICT (person_id) DO UPDATE SET traits = excluded.traits, cart_units = excluded.cart_units, "
    "trace_context = excluded.trace_context, facts_changed_at = excluded.facts_changed_at, "
    "computed_traits = excluded.computed_traits, computed_changed_at = excluded.computed_changed_at, "
    "updated_at = now()"
)
_SET_NEXT_CHECKS = sa.text(
    "UPDATE persons AS p SET next_check_at = u.at "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS u(id, at) WHERE p.person_id = u.id"
)


class PersonQueries:
    """Queries on persons and their facts. Every method runs in the caller's session (and transaction)."""

    async def lock_persons_by_key(self, session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> None:
        """Serialise work on these persons until the transaction ends: the same advisory locks as
        omni_kit.lineage takes while it applies a merge, an unmerge or an erasure of them."""
        await lock_persons(session, person_ids)

    async def lock_persons(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, PersonRecord]:
        """The known persons among person_ids, row-locked in id order."""
        if not person_ids:
            return {}
        rows = await session.execute(_LOCK_PERSONS, {"ids": list(person_ids)})
        return {row.person_id: _person(row) for row in rows}

    async def read_persons(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, PersonRecord]:
        """The known persons among person_ids, read without locking (for answers that change nothing)."""
        if not person_ids:
            return {}
        rows = await session.execute(_PERSONS, {"ids": list(person_ids)})
        return {row.person_id: _person(row) for row in rows}

    async def persons_after(
        self, session: AsyncSession, after: uuid.UUID | None, limit: int
    ) -> list[PersonRecord]:
        """The next persons in id order after `after`, read without locking."""
        rows = await session.execute(_PERSONS_AFTER, {"after": after or uuid.UUID(int=0), "limit": limit})
        return [_person(row) for row in rows]

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
                "computed": [json_text(p.computed_traits) for p in ordered],
                "computed_changed": [p.computed_changed_at for p in ordered],
            },
        )

    async def delete_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Forget the facts rows of these persons (and their next checks)."""
        await session.execute(sa.delete(PersonRow).where(PersonRow.person_id.in_(person_ids)))
        await cancel(session, PERSON_CHECK, [str(p) for p in person_ids])

    async def set_next_check(self, session: AsyncSession, person_id: uuid.UUID, at: datetime | None) -> None:
        """When the clock should re-evaluate the person (None: only when an event arrives)."""
        await self.set_next_checks(session, {person_id: at})

    async def trace_contexts(
        self, session: AsyncSession, person_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, str]]:
        """The known persons among these, each with the trace context of the event that last changed it."""
        rows = await session.execute(
            sa.select(PersonRow.person_id, PersonRow.trace_context).where(PersonRow.person_id.in_(person_ids))
        )
        return {row.person_id: row.trace_context for row in rows}

    async def set_next_checks(
        self, session: AsyncSession, checks: Mapping[uuid.UUID, datetime | None]
    ) -> None:
        """When the clock should re-evaluate each of these persons (None: only when an event arrives): the
        time is kept with the person, and the check is a job of the scheduler due then."""
        if not checks:
            return
        ids = sorted(checks)
        await session.execute(_SET_NEXT_CHECKS, {"ids": ids, "ats": [checks[p] for p in ids]})
        due = {str(p): checks[p] for p in ids if checks[p] is not None}
        if due:
            await schedule_many(session, PERSON_CHECK, due, replace=True)
        if len(due) < len(ids):
            await cancel(session, PERSON_CHECK, [str(p) for p in ids if checks[p] is None])

    async def erase_persons(self, session: AsyncSession, person_ids: Sequence[uuid.UUID]) -> None:
        """Delete everything held about these persons: facts, occurrences, last-seen times and memberships.
        A backfill cursor on one of them steps back to the live person before it."""
        ids = list(person_ids)
        for table in (EventOccurrenceRow, LastEventRow, MembershipRow, SegmentExitRow, PersonRow):
            await session.execute(sa.delete(table).where(table.person_id.in_(ids)))
        await cancel(session, PERSON_CHECK, [str(p) for p in ids])
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
