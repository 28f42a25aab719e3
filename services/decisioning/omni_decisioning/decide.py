"""Decide: the offers a person should see at a touchpoint, best first, logged and announced."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.arbitration import arbitrate
from omni_decisioning.entities import DecideQuery, Decision
from omni_decisioning.events import Publisher
from omni_decisioning.repository import Repository
from omni_kit.ids import new_id


class Decider:
    """Answers Decide from decisioning's own tables only: no call to another service on this path."""

    def __init__(self, repository: Repository, publisher: Publisher) -> None:
        self._repository = repository
        self._publisher = publisher

    async def decide(self, session: AsyncSession, query: DecideQuery) -> Decision:
        """Rank the eligible offers, log the decision and stage decisioning.decision_made with it.

        A person decisioning has never heard of simply belongs to no segment: they get the offers open to
        everyone, or none.
        """
        person_id, segment_ids = await self._repository.person_and_segments(session, query.person_id)
        offers = await self._repository.offers_at(session, query.touchpoint)
        actions = arbitrate(offers, touchpoint=query.touchpoint, segment_ids=segment_ids, limit=query.limit)
        decision = Decision(id=new_id(), person_id=person_id, actions=tuple(actions))
        await self._repository.insert_decision(session, decision, query, datetime.now(UTC))
        await self._publisher.decision_made(session, decision, touchpoint=query.touchpoint)
        return decision
