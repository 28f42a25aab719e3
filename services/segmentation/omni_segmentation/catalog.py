"""The segment catalogue: defining, changing and archiving segments, reading them, and the parsed rules every
evaluation uses."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, Violations
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
    version: int = 1


@dataclass(frozen=True)
class SegmentUpdate:
    """The outcome of an update: the segment as stored, and whether its condition changed (a new version,
    whose members are being evaluated again)."""

    record: SegmentRecord
    condition_changed: bool


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(
        message=f"a segment named {name!r} exists already",
        reason="SEGMENT_NAME_TAKEN",
        metadata={"name": name},
    )


class SegmentCatalog:
    """Segments by id and name; parsed rules are cached by segment and version (a version's condition never
    changes), so every replica sees an update at its next evaluation."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository
        self._parsed: dict[tuple[uuid.UUID, int], rules.Condition] = {}
        # The last ordering computed, by the heads it was computed from (it changes only with them).
        self._ordered: tuple[tuple[tuple[uuid.UUID, str, int], ...], list[Segment]] = ((), [])

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
        now = datetime.now(UTC)
        record = SegmentRecord(
            id=new_id(),
            name=name,
            description=description,
            condition=conditions.to_json(condition),
            created_at=now,
            updated_at=now,
        )
        await self._check_references(session, condition, "segment.condition", record.id)
        if not await self._repository.insert_segment(session, record):
            raise _name_taken(name)
        await self._repository.add_backfill(session, record.id, trace_context)
        return record

    async def update(
        self,
        session: AsyncSession,
        segment_id: uuid.UUID,
        *,
        paths: Collection[str],
        name: str,
        description: str,
        condition: pb.Condition,
        expected_version: int,
        trace_context: dict[str, str],
    ) -> SegmentUpdate:
        """Change the fields named by paths (name, description, condition; the values already validated). A
        changed condition is a new version, evaluated again for every known person (the backfill restarts:
        only the differences are announced). An update that changes nothing writes nothing.

        Raises NotFound, FailedPrecondition (archived), Aborted (expected_version is not the current one)
        and AlreadyExists (the new name is another segment's).
        """
        # The backfill's row first, then the segment's, in the order a backfill run takes them (its cursor,
        # then the segment's key as it adds memberships): a run under way finishes its slice first.
        await self._repository.lock_backfill(session, segment_id)
        current = await self.get(session, segment_id, lock=True)
        if current.archived_at is not None:
            raise FailedPrecondition(
                message=f"segment {segment_id} is archived",
                reason="SEGMENT_ARCHIVED",
                metadata={"segment_id": str(segment_id)},
            )
        if expected_version and expected_version != current.version:
            raise Aborted(
                message=f"segment {segment_id} is at version {current.version}, not {expected_version}",
                reason="SEGMENT_VERSION_CHANGED",
                metadata={"segment_id": str(segment_id), "version": str(current.version)},
            )
        updated = current
        if "name" in paths:
            updated = replace(updated, name=name)
        if "description" in paths:
            updated = replace(updated, description=description)
        changed_condition = False
        if "condition" in paths:
            stored = conditions.to_json(condition)
            if stored != current.condition:
                await self._check_references(session, condition, "segment.condition", segment_id)
                updated = replace(updated, condition=stored, version=current.version + 1)
                changed_condition = True
        if updated == current:
            return SegmentUpdate(current, False)
        updated = replace(updated, updated_at=datetime.now(UTC))
        if not await self._repository.update_segment(session, updated):
            raise _name_taken(name)
        if changed_condition:
            await self._repository.add_backfill(session, segment_id, trace_context)
        return SegmentUpdate(updated, changed_condition)

    async def archive(
        self, session: AsyncSession, segment_id: uuid.UUID, now: datetime
    ) -> tuple[SegmentRecord, list[uuid.UUID]]:
        """Archive a segment: its members leave (returned, to announce), its backfill stops, nobody is
        evaluated for it again. Archiving an archived segment changes nothing. Raises NotFound."""
        await self._repository.lock_backfill(session, segment_id)
        current = await self.get(session, segment_id, lock=True)
        if current.archived_at is not None:
            return current, []
        users = [
            s.name
            for s in await self.segments(session)
            if segment_id in rules.requirements([s.condition]).segments and s.id != segment_id
        ]
        if users:
            raise FailedPrecondition(
                message=f"segment {segment_id} is referred to by {', '.join(users)}: change those first",
                reason="SEGMENT_IN_USE",
                metadata={"segment_id": str(segment_id), "used_by": ",".join(users)},
            )
        archived = replace(current, archived_at=now, updated_at=now)
        await self._repository.update_segment(session, archived)
        await self._repository.drop_backfill(session, segment_id)
        exited = await self._repository.remove_segment_members(session, segment_id, now)
        return archived, exited

    async def _check_references(
        self, session: AsyncSession, condition: pb.Condition, path: str, segment_id: uuid.UUID
    ) -> None:
        """Refuse (InvalidArgument, naming the node) in_segment rules of segment_id's condition that refer to
        a segment that does not exist, is archived, or leads back to segment_id."""
        referring = [
            (uuid.UUID(node.in_segment.segment_id), f"{node_path}.in_segment.segment_id")
            for node, node_path in conditions.nodes(condition, path)
            if node.WhichOneof("kind") == "in_segment"
        ]
        if not referring:
            return
        # Two updates checked at once could each close half of a circle: changes of references take turns.
        await self._repository.lock_references(session)
        live = await self.segments(session)
        refers = {s.id: rules.requirements([s.condition]).segments for s in live}
        names = {s.id: s.name for s in live}
        refers[segment_id] = frozenset(target for target, _ in referring)
        violations = Violations()
        for target, field_path in referring:
            if target == segment_id:
                violations.add(field_path, "a segment cannot refer to itself")
                continue
            if target not in refers:
                record = await self._repository.get_segment(session, target)
                what = "archived" if record is not None else "not found"
                violations.add(field_path, f"segment {target} is {what}")
                continue
            circle = _path_back(refers, target, segment_id)
            if circle is not None:
                shown = " → ".join(names.get(s, "this segment") for s in [segment_id, *circle])
                violations.add(field_path, f"segments would refer to each other in a circle: {shown}")
        violations.raise_if_any("the condition refers to segments it cannot")

    async def get(self, session: AsyncSession, segment_id: uuid.UUID, *, lock: bool = False) -> SegmentRecord:
        """The segment with that id; raises NotFound."""
        record = await self._repository.get_segment(session, segment_id, lock=lock)
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
        """Every live segment, oldest first, with its parsed rules."""
        heads = await self._repository.segment_heads(session)
        missing = [h.id for h in heads if (h.id, h.version) not in self._parsed]
        if missing:
            stored = await self._repository.segment_conditions(session, missing)
            for segment_id, (version, data) in stored.items():
                self._parsed[(segment_id, version)] = conditions.to_rules(conditions.from_json(data))
        key = tuple((h.id, h.name, h.version) for h in heads if (h.id, h.version) in self._parsed)
        if self._ordered[0] != key:
            segments = [Segment(i, n, self._parsed[(i, v)], v) for i, n, v in key]
            self._ordered = (key, _dependencies_first(segments))
        return list(self._ordered[1])

    @staticmethod
    def parsed(record: SegmentRecord) -> Segment:
        """A stored segment with its parsed rules."""
        rule = conditions.to_rules(conditions.from_json(record.condition))
        return Segment(record.id, record.name, rule, record.version)

    @staticmethod
    def requirements(segments: list[Segment]) -> rules.Requirements:
        """The event facts evaluating these segments needs."""
        return rules.requirements([s.condition for s in segments])


def _path_back(
    refers: dict[uuid.UUID, frozenset[uuid.UUID]], start: uuid.UUID, goal: uuid.UUID
) -> list[uuid.UUID] | None:
    """The segments from start to goal following in_segment references (start and goal included), if any."""
    stack: list[tuple[uuid.UUID, list[uuid.UUID]]] = [(start, [start])]
    seen: set[uuid.UUID] = set()
    while stack:
        node, trail = stack.pop()
        if node == goal:
            return trail
        if node in seen:
            continue
        seen.add(node)
        stack.extend((nxt, [*trail, nxt]) for nxt in sorted(refers.get(node, ())))
    return None


def _dependencies_first(segments: list[Segment]) -> list[Segment]:
    """The segments ordered so that each comes after those its in_segment rules refer to, otherwise oldest
    first (creation and updates refuse circles; should one exist, its segments keep their id order)."""
    by_id = {s.id: s for s in segments}
    ordered: list[Segment] = []
    placed: set[uuid.UUID] = set()
    visiting: set[uuid.UUID] = set()

    def place(segment: Segment) -> None:
        if segment.id in placed or segment.id in visiting:
            return
        visiting.add(segment.id)
        for target in sorted(rules.requirements([segment.condition]).segments):
            if target in by_id:
                place(by_id[target])
        visiting.discard(segment.id)
        placed.add(segment.id)
        ordered.append(segment)

    for segment in segments:
        place(segment)
    return ordered
