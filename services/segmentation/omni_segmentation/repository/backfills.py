"""Backfills: new segments being evaluated over the persons known before them."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.scheduler import schedule
from omni_segmentation.jobs import BACKFILL
from omni_segmentation.models import BackfillRow, PersonRow
from omni_segmentation.records import BackfillRecord


class BackfillQueries:
    """Queries on backfills. Every method runs in the caller's session (and transaction)."""

    async def add_backfill(
        self, session: AsyncSession, segment_id: uuid.UUID, trace_context: dict[str, str]
    ) -> None:
        """Schedule the evaluation of a new (or changed) segment for every person known so far (a job due
        now); a backfill of it under way starts again from the first person."""
        statement = insert(BackfillRow).values(
            segment_id=segment_id, after_person_id=None, trace_context=trace_context
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[BackfillRow.segment_id],
                set_={"after_person_id": None, "trace_context": statement.excluded.trace_context},
            )
        )
        await schedule(session, BACKFILL, str(segment_id), replace=True)

    async def drop_backfill(self, session: AsyncSession, segment_id: uuid.UUID) -> None:
        """Stop a segment's backfill, if one is under way."""
        await session.execute(sa.delete(BackfillRow).where(BackfillRow.segment_id == segment_id))

    async def lock_backfill(self, session: AsyncSession, segment_id: uuid.UUID) -> BackfillRecord | None:
        """The segment's pending backfill, locked; None when it is finished (or its segment gone)."""
        result = await session.execute(
            sa.select(BackfillRow.segment_id, BackfillRow.after_person_id, BackfillRow.trace_context)
            .where(BackfillRow.segment_id == segment_id)
            .with_for_update()
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
