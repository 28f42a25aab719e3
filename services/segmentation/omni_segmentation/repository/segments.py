"""Segments: definitions, names and conditions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.models import SegmentRow
from omni_segmentation.records import SegmentRecord


def _segment(row: SegmentRow) -> SegmentRecord:
    return SegmentRecord(row.id, row.name, row.description, row.condition, row.created_at)


class SegmentQueries:
    """Queries on segments. Every method runs in the caller's session (and transaction)."""

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
