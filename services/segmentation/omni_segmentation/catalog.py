"""The segment catalogue: defining segments, reading them, and the parsed rules every evaluation uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import AlreadyExists, NotFound
from omni_kit.ids import new_id
from omni_segmentation import conditions, rules
from omni_segmentation.records import SegmentRecord
from omni_segmentation.repository import Repository


@dataclass(frozen=True)
class Segment:
    """A segment ready for evaluation."""

    id: uuid.UUID
    name: str
    condition: rules.Condition


class SegmentCatalog:
    """Segments by id and name; parsed rules are cached, since a segment's definition never changes."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._parsed: dict[uuid.UUID, Segment] = {}

    async def create(
        self,
        session: AsyncSession,
        *,
        name: str,
        description: str,
        condition: pb.Condition,
        trace_context: dict[str, str],
    ) -> SegmentRecord:
        """Store a new segment (its condition already validated) and schedule its backfill.

        Raises AlreadyExists when the name is taken.
        """
        record = SegmentRecord(
            id=new_id(),
            name=name,
            description=description,
            condition=conditions.to_json(condition),
            created_at=datetime.now(UTC),
        )
        if not await self._repository.insert_segment(session, record):
            raise AlreadyExists(
                message=f"a segment named {name!r} exists already",
                reason="SEGMENT_NAME_TAKEN",
                metadata={"name": name},
            )
        await self._repository.add_backfill(session, record.id, trace_context)
        return record

    async def get(self, session: AsyncSession, segment_id: uuid.UUID) -> SegmentRecord:
        """The segment with that id; raises NotFound."""
        record = await self._repository.get_segment(session, segment_id)
        if record is None:
            raise NotFound(
                message=f"no segment {segment_id}",
                reason="SEGMENT_NOT_FOUND",
                metadata={"segment_id": str(segment_id)},
            )
        return record

    async def page(
        self, session: AsyncSession, *, after: uuid.UUID | None, size: int
    ) -> tuple[list[SegmentRecord], uuid.UUID | None]:
        """One page of segments after `after`, and the id to continue after (None on the last page)."""
        records = await self._repository.list_segments(session, after=after, limit=size + 1)
        if len(records) > size:
            return records[:size], records[size - 1].id
        return records, None

    async def segments(self, session: AsyncSession) -> list[Segment]:
        """Every segment, oldest first, with its parsed rules."""
        heads = await self._repository.segment_heads(session)
        missing = [segment_id for segment_id, _ in heads if segment_id not in self._parsed]
        if missing:
            stored = await self._repository.segment_conditions(session, missing)
            names = dict(heads)
            for segment_id, data in stored.items():
                rule = conditions.to_rules(conditions.from_json(data))
                self._parsed[segment_id] = Segment(segment_id, names[segment_id], rule)
        return [self._parsed[segment_id] for segment_id, _ in heads if segment_id in self._parsed]

    @staticmethod
    def requirements(segments: list[Segment]) -> rules.Requirements:
        """The event facts evaluating these segments needs."""
        return rules.requirements([s.condition for s in segments])
