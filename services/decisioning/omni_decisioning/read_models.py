"""Decisioning's copies of other services' facts, fed by their events: memberships, and what identity's
lineage does to them (merges, unmerges, erasures, through omni_kit.lineage's hooks). (Profile's contact
verdicts are kept by omni_kit.contact.)"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.contact_policy import RETENTION
from omni_decisioning.repository import Repository
from omni_kit.idempotency import forget_answers
from omni_kit.lineage import Erasure, LineageTable, Merge, Unmerge

log = logging.getLogger(__name__)


class ReadModels:
    """Applies segmentation and identity events to decisioning's read models.

    Every update is "newest wins" by the time the fact became true, so redelivered or reordered events
    leave the same state as in-order ones. A fact about a merged id is recorded for the person it leads to;
    one about a forgotten person is dropped (it was staged before the erasure reached its producer).
    """

    def __init__(self, repository: Repository, lineage: LineageTable) -> None:
        self._repository = repository
        self._lineage = lineage

    async def person(self, session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID | None:
        """The person an id stands for now (the survivor, if it was merged); None if it was forgotten."""
        where = (await self._lineage.whereabouts(session, [person_id]))[person_id]
        return None if where.forgotten else where.person_id

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

        Returns the person the fact was recorded for (the survivor, if the id was merged), or None when it
        was not: a newer fact about that membership is known, or the person was forgotten.
        """
        person = await self.person(session, person_id)
        if person is None:
            log.info("membership of forgotten person %s in %s ignored", person_id, segment_id)
            return None
        applied = await self._repository.record_membership(
            session, person_id=person, segment_id=segment_id, is_member=is_member, as_of=as_of
        )
        return person if applied else None

    async def message_sent(
        self, session: AsyncSession, *, request_id: str, person_id: uuid.UUID, channel: int, at: datetime
    ) -> None:
        """Count a marketing message the gateway sent against the person's caps (the survivor's, if merged;
        none for a forgotten person)."""
        person = await self.person(session, person_id)
        if person is None:
            return
        await self._repository.log_contact(
            session,
            request_id=request_id,
            person_id=person,
            channel=channel,
            at=at,
            source="gateway",
            retention=RETENTION,
        )

    async def message_failed(self, session: AsyncSession, request_id: str) -> None:
        """A message the gateway gave up on does not count against the caps."""
        await self._repository.unlog_contact(session, request_id)

    async def persons_merged(self, session: AsyncSession, merges: Sequence[Merge]) -> None:
        """Fold the merged persons' memberships and journey history into the survivor."""
        for merge in merges:
            await self._repository.merge_persons(
                session, survivor_id=merge.survivor_id, merged_ids=merge.merged_ids
            )

    async def person_unmerged(self, session: AsyncSession, unmerge: Unmerge) -> None:
        """Give the restored person back the journey runs a merge took from it (or from a person merged into
        it before), so the re-entry guard counts its own history again. Memberships follow from
        segmentation's entries and exits, which it announces for both persons after the split; contact
        verdicts from profile's announcements of both (the consent answers stay with the survivor)."""
        await self._repository.give_back_runs(
            session,
            survivor_id=unmerge.survivor_id,
            restored_id=unmerge.restored_id,
            origin_ids=[unmerge.restored_id, *unmerge.restored_merged_ids],
        )

    async def persons_forgotten(self, session: AsyncSession, erasure: Erasure) -> None:
        """Delete everything held about the persons (erasure): read models, journey runs and decisions, and
        the stored answers that show them (none do yet: journeys and offers name no person)."""
        await self._repository.forget_persons(session, erasure.person_ids)
        await forget_answers(session, erasure.person_ids)
