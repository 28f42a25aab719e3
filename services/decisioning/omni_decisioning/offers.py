"""Offers: the things Decide can put in front of a person."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.entities import NewOffer, Offer
from omni_decisioning.repository import Repository
from omni_kit.errors import AlreadyExists
from omni_kit.ids import new_id


class Offers:
    """Creates offers."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def create(self, session: AsyncSession, new: NewOffer) -> Offer:
        """Store a new offer; AlreadyExists when its name is taken."""
        offer = Offer(
            id=new_id(),
            name=new.name,
            description=new.description,
            touchpoints=new.touchpoints,
            segment_id=new.segment_id,
            priority=new.priority,
            create_time=datetime.now(UTC),
        )
        if not await self._repository.insert_offer(session, offer):
            raise AlreadyExists(
                message=f"an offer named {new.name!r} exists already",
                reason="OFFER_EXISTS",
                metadata={"name": new.name},
            )
        return offer
