"""Segments: definitions, names, conditions and versions; the names of what profile's events carry."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.models import SegmentRow
from omni_segmentation.records import SegmentRecord


def _segment(row: SegmentRow) -> SegmentRecord:
    return SegmentRecord(
        row.id,
        row.name,
        row.description,
        row.condition,
        row.created_at,
        version=row.version,
        updated_at=row.updated_at,
        archived_at=row.archived_at,
    )


@dataclass(frozen=True)
class SegmentHead:
    """What every evaluation reads of a live segment: its id, name and condition version."""

    id: uuid.UUID
    name: str
    version: int


_NOTE_NAMES = sa.text(
    "INSERT INTO seen_names (kind, name) SELECT :kind, n FROM unnest(CAST(:names AS text[])) AS t(n) "
    "ON CONFLICT DO NOTHING"
)
_SEEN_NAMES = sa.text("SELECT name FROM seen_names WHERE kind = :kind AND name = ANY(CAST(:names AS text[]))")


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
                version=segment.version,
                updated_at=segment.updated_at or segment.created_at,
            )
            .on_conflict_do_nothing(index_elements=[SegmentRow.name])
            .returning(SegmentRow.id)
        )
        return inserted is not None

    async def update_segment(self, session: AsyncSession, segment: SegmentRecord) -> bool:
        """Write a segment's name, description, condition, version and times; False (nothing written)
        when its new name is another segment's."""
        try:
            async with session.begin_nested():
                await session.execute(
                    sa.update(SegmentRow)
                    .where(SegmentRow.id == segment.id)
                    .values(
                        name=segment.name,
                        description=segment.description,
                        condition=segment.condition,
                        version=segment.version,
                        updated_at=segment.updated_at,
                        archived_at=segment.archived_at,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def get_segment(
        self, session: AsyncSession, segment_id: uuid.UUID, *, lock: bool = False
    ) -> SegmentRecord | None:
        """The segment with that id, if any. Locked if asked: FOR NO KEY UPDATE, so that evaluations adding
        memberships of it (whose foreign key takes a KEY SHARE lock) go on meanwhile."""
        query = sa.select(SegmentRow).where(SegmentRow.id == segment_id)
        if lock:
            query = query.with_for_update(key_share=True)
        row = (await session.scalars(query)).first()
        return _segment(row) if row is not None else None

    async def list_segments(
        self, session: AsyncSession, *, after: uuid.UUID | None, limit: int
    ) -> list[SegmentRecord]:
        """Up to limit segments with ids after `after`, oldest first (ids are time-ordered)."""
        query = sa.select(SegmentRow).order_by(SegmentRow.id).limit(limit)
        if after is not None:
            query = query.where(SegmentRow.id > after)
        return [_segment(row) for row in await session.scalars(query)]

    async def segment_heads(self, session: AsyncSession) -> list[SegmentHead]:
        """Every live (not archived) segment's id, name and version, oldest first."""
        rows = await session.execute(
            sa.select(SegmentRow.id, SegmentRow.name, SegmentRow.version)
            .where(SegmentRow.archived_at.is_(None))
            .order_by(SegmentRow.id)
        )
        return [SegmentHead(row.id, row.name, row.version) for row in rows]

    async def segment_conditions(
        self, session: AsyncSession, segment_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[int, dict[str, Any]]]:
        """The stored conditions of the given segments, with their versions."""
        rows = await session.execute(
            sa.select(SegmentRow.id, SegmentRow.version, SegmentRow.condition).where(
                SegmentRow.id.in_(segment_ids)
            )
        )
        return {row.id: (row.version, row.condition) for row in rows}

    async def lock_references(self, session: AsyncSession) -> None:
        """Serialise changes of in_segment references until the transaction ends (a transaction-level
        advisory lock; segmentation's other advisory locks are keyed by person)."""
        await session.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended('segmentation.references', 0))")
        )

    async def note_names(self, session: AsyncSession, kind: str, names: Iterable[str]) -> None:
        """Remember that these event types or trait names were seen."""
        ordered = sorted(set(names))
        if ordered:
            await session.execute(_NOTE_NAMES, {"kind": kind, "names": ordered})

    async def seen_names(self, session: AsyncSession, kind: str, names: Iterable[str]) -> set[str]:
        """Those of the names seen before."""
        ordered = sorted(set(names))
        if not ordered:
            return set()
        rows = await session.execute(_SEEN_NAMES, {"kind": kind, "names": ordered})
        return {row.name for row in rows}
