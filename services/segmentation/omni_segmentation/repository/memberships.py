"""Memberships: who is in which segment since when."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.models import MembershipRow, SegmentExitRow, SegmentRow, SegmentSizeRow
from omni_segmentation.records import MembershipRecord

# Statements over arrays, one per batch of persons or events, whatever their number (an IN list would be
# a parameter per person, compiled and sent anew each time).
_MEMBERSHIPS = sa.text(
    "SELECT person_id, segment_id, entered_at FROM memberships WHERE person_id = ANY(CAST(:ids AS uuid[]))"
)
_ADD_MEMBERSHIPS = sa.text(
    "INSERT INTO memberships (segment_id, person_id, entered_at) "
    "SELECT s, p, CAST(:at AS timestamptz) FROM unnest(CAST(:segments AS uuid[]), CAST(:persons AS uuid[])) "
    "AS t(s, p) ON CONFLICT DO NOTHING"
)
_REMOVE_MEMBERSHIPS = sa.text(
    "WITH gone AS (DELETE FROM memberships AS m USING unnest(CAST(:persons AS uuid[]), "
    "CAST(:segments AS uuid[])) AS t(p, s) WHERE m.person_id = t.p AND m.segment_id = t.s "
    "RETURNING m.segment_id, m.person_id) "
    "INSERT INTO segment_exits (segment_id, person_id, exited_at) "
    "SELECT segment_id, person_id, CAST(:at AS timestamptz) FROM gone ORDER BY segment_id, person_id "
    "ON CONFLICT (segment_id, person_id) DO UPDATE SET exited_at = excluded.exited_at"
)
_RECORD_SIZES = sa.text(
    "INSERT INTO segment_sizes (segment_id, day, member_count, counted_at) "
    "SELECT s.id, CAST(:day AS date), (SELECT count(*) FROM memberships AS m WHERE m.segment_id = s.id), "
    "CAST(:at AS timestamptz) FROM segments AS s WHERE s.archived_at IS NULL ORDER BY s.id "
    "ON CONFLICT (segment_id, day) DO UPDATE SET member_count = excluded.member_count, "
    "counted_at = excluded.counted_at"
)
_REMOVE_SEGMENT_MEMBERS = sa.text(
    "WITH gone AS (DELETE FROM memberships WHERE segment_id = :segment RETURNING person_id), "
    "exits AS (INSERT INTO segment_exits (segment_id, person_id, exited_at) "
    "SELECT :segment, person_id, CAST(:at AS timestamptz) FROM gone "
    "ON CONFLICT (segment_id, person_id) DO UPDATE SET exited_at = excluded.exited_at) "
    "SELECT person_id FROM gone ORDER BY person_id"
)


class MembershipQueries:
    """Queries on memberships. Every method runs in the caller's session (and transaction)."""

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
        self, session: AsyncSession, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], exited_at: datetime
    ) -> None:
        """End each (person, segment) membership and remember when, in one statement."""
        if pairs:
            await session.execute(
                _REMOVE_MEMBERSHIPS,
                {"persons": [p for p, _ in pairs], "segments": [s for _, s in pairs], "at": exited_at},
            )

    async def remove_segment_members(
        self, session: AsyncSession, segment_id: uuid.UUID, exited_at: datetime
    ) -> list[uuid.UUID]:
        """End every membership of a segment, remembering when; return the persons, in id order."""
        rows = await session.execute(_REMOVE_SEGMENT_MEMBERS, {"segment": segment_id, "at": exited_at})
        return [row.person_id for row in rows]

    async def segment_members(
        self, session: AsyncSession, segment_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, datetime]]:
        """Up to limit members of a segment after `after`, in person id order, with when they entered."""
        query = (
            sa.select(MembershipRow.person_id, MembershipRow.entered_at)
            .where(MembershipRow.segment_id == segment_id)
            .order_by(MembershipRow.person_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(MembershipRow.person_id > after)
        return [(row.person_id, row.entered_at) for row in await session.execute(query)]

    async def record_sizes(self, session: AsyncSession, at: datetime) -> None:
        """Record every live segment's member count as its size on at's UTC day (one statement)."""
        await session.execute(_RECORD_SIZES, {"day": at.astimezone(UTC).date(), "at": at})

    async def sizes(
        self, session: AsyncSession, segment_id: uuid.UUID, since: date
    ) -> list[tuple[date, int]]:
        """A segment's recorded sizes from `since` on, oldest first."""
        rows = await session.execute(
            sa.select(SegmentSizeRow.day, SegmentSizeRow.member_count)
            .where(SegmentSizeRow.segment_id == segment_id, SegmentSizeRow.day >= since)
            .order_by(SegmentSizeRow.day)
        )
        return [(row.day, row.member_count) for row in rows]

    async def count_members(self, session: AsyncSession, segment_id: uuid.UUID) -> int:
        """How many persons are members of a segment."""
        count = await session.scalar(
            sa.select(sa.func.count())
            .select_from(MembershipRow)
            .where(MembershipRow.segment_id == segment_id)
        )
        return int(count or 0)

    async def membership_times(
        self, session: AsyncSession, segment_id: uuid.UUID, person_id: uuid.UUID
    ) -> tuple[datetime | None, datetime | None]:
        """When the person entered the segment (None: not a member) and last left it (None: never)."""
        entered = await session.scalar(
            sa.select(MembershipRow.entered_at).where(
                MembershipRow.segment_id == segment_id, MembershipRow.person_id == person_id
            )
        )
        exited = await session.scalar(
            sa.select(SegmentExitRow.exited_at).where(
                SegmentExitRow.segment_id == segment_id, SegmentExitRow.person_id == person_id
            )
        )
        return entered, exited

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
