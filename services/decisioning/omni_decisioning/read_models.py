"""Decisioning's copies of other services' facts, fed by their events: memberships, merges, erasure. (Profile's
contact verdicts are kept by omni_kit.contact.)"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.repository import Repository


class ReadModels:
    """Applies segmentation, profile and identity events to decisioning's read models.

    Every update is "newest wins" by the time the fact became true, so redelivered or reordered events
    leave the same state as in-order ones.
    """

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def person(self, session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID:
        """The person an id stands for now (the survivor, if it was merged)."""
        return await self._repository.survivor_of(session, person_id)

    async def membership_changed(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID,
        segment_id: uuid.UUID,
        is_member: bool,
        as_of: datetime,
    ) -> uuid.UUID | None:
        """Record that the person entered or left the segment at `as_of`.

        Returns the person the fact was recorded for (the survivor, if the id was merged), or None when a
        newer fact about that membership is known and this one was ignored.
        """
        person = await self.person(session, person_id)
        applied = await self._repository.record_membership(
            session, person_id=person, segment_id=segment_id, is_member=is_member, as_of=as_of
        )
        return person if applied else None

    async def persons_merged(
        self, session: AsyncSession, *, survivor_id: uuid.UUID, merged_ids: Sequence[uuid.UUID]
    ) -> None:
        """Fold the merged persons' memberships and journey history into the survivor."""
        survivor = await self.person(session, survivor_id)
        await self._repository.merge_persons(session, survivor_id=survivor, merged_ids=merged_ids)

    async def persons_forgotten(self, session: AsyncSession, person_ids: Collection[uuid.UUID]) -> None:
        """Delete everything held about the persons (erasure): read models, journey runs and decisions."""
        await self._repository.forget_persons(session, person_ids)
