"""The per-person facts read model: what profile's events tell segmentation, and re-evaluation after each."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.records import PersonRecord
from omni_segmentation.repository import Repository


class FactsRecorder:
    """Applies profile's events to the read model, then re-evaluates the person's segments."""

    def __init__(self, repository: Repository, evaluator: MembershipEvaluator) -> None:
        self._repository = repository
        self._evaluator = evaluator

    async def _live_person(self, session: AsyncSession, person_id: uuid.UUID) -> tuple[uuid.UUID, bool]:
        """Lock the person against a concurrent merge and follow a merge that happened already.

        Returns the person to apply to and whether it is a survivor standing in for a merged person.
        """
        await self._repository.lock_persons_by_key(session, [person_id])
        survivor = await self._repository.survivor_of(session, person_id)
        if survivor is None:
            return person_id, False
        await self._repository.lock_persons_by_key(session, [survivor])
        return survivor, True

    async def record_event(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID,
        event_id: str,
        event_type: str,
        occurred_at: datetime,
        trace_context: dict[str, str],
        now: datetime,
    ) -> None:
        """Remember one tracked event (a merged person's goes to the survivor) and re-evaluate the person."""
        person_id, _ = await self._live_person(session, person_id)
        await self._repository.ensure_person(session, person_id, trace_context)
        await self._repository.add_occurrence(session, person_id, event_id, event_type, occurred_at)
        await self._evaluator.evaluate_person(session, person_id, now)

    async def record_profile(
        self,
        session: AsyncSession,
        *,
        person_id: uuid.UUID,
        traits: Mapping[str, Any] | None,
        cart_units: int | None,
        changed_at: datetime,
        trace_context: dict[str, str],
        now: datetime,
    ) -> bool:
        """Apply a profile change (None leaves that part as it is) and re-evaluate the person.

        A change older than the last one applied, or about a person merged away (the survivor's own change
        follows), is ignored; returns whether it was applied.
        """
        live_id, redirected = await self._live_person(session, person_id)
        if redirected:
            return False
        person = await self._repository.lock_person(session, live_id) or PersonRecord(live_id)
        if person.facts_changed_at is not None and changed_at < person.facts_changed_at:
            return False
        person = replace(
            person,
            traits=dict(traits) if traits is not None else person.traits,
            cart_units=cart_units if cart_units is not None else person.cart_units,
            trace_context=trace_context,
            facts_changed_at=changed_at,
        )
        await self._repository.save_person(session, person)
        await self._evaluator.evaluate_person(session, live_id, now)
        return True
