"""Memberships: who is in which segment since when."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.models import MembershipRow, SegmentRow
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
    "DELETE FROM memberships AS m USING unnest(CAST(:persons AS uuid[]), CAST(:segments AS uuid[])) "
    "AS t(p, s) WHERE m.person_id = t.p AND m.segment_id = t.s"
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
