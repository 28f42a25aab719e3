"""A multi-step journey's lifecycle: draft → published (each publish an immutable version) ⇄ paused → archived.

Publishing makes the draft the next version; persons enter the latest version, and runs finish on theirs or
move at their next step (JourneySpec.version_policy). An edit of a published journey is a draft of its next
version: the published one runs on meanwhile. Pausing stops new entries and steps at once (the step jobs of
a paused journey's runs complete without a step; resuming schedules each run's step again at its due time,
or at once when that passed). Archiving ends every run still going.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_decisioning.models import JourneyRow
from omni_decisioning.orchestration import spec as specs
from omni_decisioning.orchestration.engine import ENTER_MEMBERS_JOB, Engine
from omni_decisioning.orchestration.store import Store
from omni_kit.errors import AlreadyExists, FailedPrecondition, NotFound
from omni_kit.ids import new_id
from omni_kit.scheduler import schedule

# The earliest a local time anywhere comes (UTC+14): a campaign in persons' local time starts that much before.
_EARLIEST_ZONE = timedelta(hours=14)


def _campaign_start(campaign: d.CampaignEntryTrigger) -> datetime | None:
    """When a campaign's members are entered (None: at once): its time, or with local_time the first moment
    that time comes anywhere (each run's first step then waits for the person's own)."""
    if not campaign.HasField("start_time"):
        return None
    start = campaign.start_time.ToDatetime(tzinfo=UTC)
    return start - _EARLIEST_ZONE if campaign.local_time else start


def not_found(journey_id: uuid.UUID) -> NotFound:
    """NotFound for a journey id."""
    return NotFound(
        message=f"no journey {journey_id}",
        reason="JOURNEY_NOT_FOUND",
        metadata={"journey_id": str(journey_id)},
    )


class Lifecycle:
    """Creates, edits, publishes, pauses, resumes and archives multi-step journeys."""

    def __init__(self, store: Store, engine: Engine) -> None:
        self._store = store
        self._engine = engine

    async def create(self, session: AsyncSession, name: str, spec: d.JourneySpec) -> JourneyRow:
        """A new journey holding the spec as its draft; AlreadyExists when the name is taken."""
        journey_id = new_id()
        if not await self._store.insert_draft(
            session, journey_id=journey_id, name=name, draft=specs.to_json(spec), at=datetime.now(UTC)
        ):
            raise AlreadyExists(
                message=f"a journey named {name!r} exists already",
                reason="JOURNEY_EXISTS",
                metadata={"name": name},
            )
        row = await self._store.journey(session, journey_id)
        assert row is not None
        return row

    async def _multi_step(self, session: AsyncSession, journey_id: uuid.UUID) -> JourneyRow:
        row = await self._store.journey(session, journey_id, lock=True)
        if row is None:
            raise not_found(journey_id)
        if not row.multi_step:
            raise FailedPrecondition(
                message=f"journey {journey_id} is a one-message journey, which has no draft, versions or pause",
                reason="JOURNEY_NOT_MULTI_STEP",
                metadata={"journey_id": str(journey_id)},
            )
        return row

    async def update_draft(
        self, session: AsyncSession, journey_id: uuid.UUID, spec: d.JourneySpec
    ) -> JourneyRow:
        """Replace the draft (of the next version, for a published journey)."""
        row = await self._multi_step(session, journey_id)
        self._not_archived(row)
        row.draft = specs.to_json(spec)
        row.update_time = datetime.now(UTC)
        await session.flush()
        return row

    async def draft_of(self, session: AsyncSession, journey_id: uuid.UUID) -> dict[str, Any]:
        """The draft to publish (read before its references are checked); FailedPrecondition without one."""
        row = await self._multi_step(session, journey_id)
        self._not_archived(row)
        if row.draft is None:
            raise FailedPrecondition(
                message=f"journey {journey_id} has no draft to publish",
                reason="JOURNEY_DRAFT_NOT_FOUND",
                metadata={"journey_id": str(journey_id)},
            )
        return dict(row.draft)

    async def publish(
        self, session: AsyncSession, journey_id: uuid.UUID, checked: dict[str, Any]
    ) -> JourneyRow:
        """Make the draft (as checked: Aborted if it changed since) the next version."""
        row = await self._multi_step(session, journey_id)
        self._not_archived(row)
        if row.draft != checked:
            raise FailedPrecondition(
                message=f"the draft of journey {journey_id} changed while it was being published; publish again",
                reason="JOURNEY_DRAFT_CHANGED",
                metadata={"journey_id": str(journey_id)},
            )
        spec = specs.from_json(checked)
        now = datetime.now(UTC)
        first = row.version == 0
        row.version += 1
        await self._store.add_version(session, row.id, row.version, checked, now)
        row.draft = None
        if row.state == "draft":
            row.state = "published"
        row.update_time = now
        entry = spec.entry.WhichOneof("kind")
        row.entry_segment_id = uuid.UUID(spec.entry.segment.segment_id) if entry == "segment" else None
        row.entry_event_type = spec.entry.event.event_type if entry == "event" else None
        # Earlier versions' types stay: their runs may still wait for those events.
        row.event_types = sorted(set(row.event_types or ()) | specs.event_types(spec))
        await session.flush()
        # Members are entered by a job, a page at a time (a campaign's at its time).
        payload = {"journey_id": str(row.id), "version": row.version}
        key = f"{row.id}:{row.version}"
        if first and spec.enter_existing_members and entry == "segment":
            await schedule(session, ENTER_MEMBERS_JOB, key, None, payload)
        if entry == "campaign":
            await schedule(session, ENTER_MEMBERS_JOB, key, _campaign_start(spec.entry.campaign), payload)
        return row

    async def pause(self, session: AsyncSession, journey_id: uuid.UUID) -> JourneyRow:
        """Stop entries and steps at once."""
        row = await self._multi_step(session, journey_id)
        if row.state not in ("published", "paused"):
            raise self._wrong_state(row, "paused")
        row.state, row.update_time = "paused", datetime.now(UTC)
        await session.flush()
        return row

    async def resume(self, session: AsyncSession, journey_id: uuid.UUID) -> JourneyRow:
        """Let a paused journey go on: each run's step at its due time (at once, if that passed)."""
        row = await self._multi_step(session, journey_id)
        if row.state not in ("published", "paused"):
            raise self._wrong_state(row, "resumed")
        if row.state == "paused":
            row.state, row.update_time = "published", datetime.now(UTC)
            await session.flush()
            await self._engine.resume_runs(session, row.id)
        return row

    async def archive(self, session: AsyncSession, journey_id: uuid.UUID) -> JourneyRow:
        """End the journey for good, with every run still going."""
        row = await self._multi_step(session, journey_id)
        if row.state != "archived":
            row.state, row.update_time = "archived", datetime.now(UTC)
            row.entry_segment_id = row.entry_event_type = None
            await session.flush()
            await self._engine.end_runs(session, row.id, "journey archived")
        return row

    @staticmethod
    def _not_archived(row: JourneyRow) -> None:
        if row.state == "archived":
            raise FailedPrecondition(
                message=f"journey {row.id} is archived",
                reason="JOURNEY_ARCHIVED",
                metadata={"journey_id": str(row.id)},
            )

    @staticmethod
    def _wrong_state(row: JourneyRow, wanted: str) -> FailedPrecondition:
        return FailedPrecondition(
            message=f"journey {row.id} is {row.state} and cannot be {wanted}",
            reason="JOURNEY_STATE",
            metadata={"journey_id": str(row.id), "state": row.state},
        )
