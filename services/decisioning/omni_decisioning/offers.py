"""Offers: the things Decide can put in front of a person, as versioned resources.

Every change (an update, the archiving) makes a new version, kept in the offer's history (offer_versions)
and raising the offer catalogue's version in the same transaction, so Decide uses it from its next group on,
on every replica (see decide.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.entities import NewOffer, Offer
from omni_decisioning.repository import Repository
from omni_kit.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from omni_kit.ids import new_id


def _not_found(offer_id: uuid.UUID) -> NotFound:
    return NotFound(
        message=f"offer {offer_id} not found", reason="OFFER_NOT_FOUND", metadata={"offer_id": str(offer_id)}
    )


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(
        message=f"an offer named {name!r} exists already", reason="OFFER_EXISTS", metadata={"name": name}
    )


class Offers:
    """Creates, reads, updates and archives offers."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def create(self, session: AsyncSession, new: NewOffer) -> Offer:
        """Store a new offer (version 1); AlreadyExists when its name is taken."""
        now = datetime.now(UTC)
        offer = Offer(**_fields(new), id=new_id(), create_time=now, version=1, update_time=now)
        if not await self._repository.insert_offer(session, offer):
            raise _name_taken(new.name)
        return offer

    async def get(self, session: AsyncSession, offer_id: uuid.UUID, version: int = 0) -> Offer:
        """The offer now, or at a version; NotFound for an unknown offer or a version it never had."""
        offer = await self._repository.offer(session, offer_id)
        if offer is None:
            raise _not_found(offer_id)
        if version == 0 or version == offer.version:
            return offer
        kept = await self._repository.offer_version(session, offer_id, version)
        if kept is None:
            raise NotFound(
                message=f"offer {offer_id} has no version {version} (it is at version {offer.version})",
                reason="OFFER_VERSION_NOT_FOUND",
                metadata={"offer_id": str(offer_id), "version": str(version)},
            )
        return kept

    async def page(
        self, session: AsyncSession, *, after: uuid.UUID | None, size: int, show_archived: bool
    ) -> tuple[list[Offer], bool]:
        """A page of offers in creation order, and whether more follow."""
        found = await self._repository.list_offers(
            session, after=after, limit=size + 1, show_archived=show_archived
        )
        return found[:size], len(found) > size

    async def update(
        self,
        session: AsyncSession,
        offer_id: uuid.UUID,
        values: NewOffer,
        paths: Collection[str],
        *,
        expected_version: int = 0,
    ) -> Offer:
        """Make the next version of an offer with the fields in `paths` taken from `values`.

        NotFound for an unknown offer; Aborted (OFFER_VERSION_CHANGED) when expected_version is set and the
        offer is at another; FailedPrecondition (OFFER_ARCHIVED) for an archived offer; AlreadyExists when
        the new name is another offer's. An update that changes nothing answers the offer as it is.
        """
        current = await self._locked(session, offer_id, expected_version)
        if current.archive_time is not None:
            raise FailedPrecondition(
                message=f"offer {offer_id} is archived and cannot change",
                reason="OFFER_ARCHIVED",
                metadata={"offer_id": str(offer_id)},
            )
        wanted = {path: getattr(values, path) for path in paths}
        changes = {path: value for path, value in wanted.items() if getattr(current, path) != value}
        merged = dataclasses.replace(current, **changes)
        if merged.valid_from and merged.valid_until and merged.valid_until <= merged.valid_from:
            raise FailedPrecondition(
                message="the offer's valid_until would not be after its valid_from",
                reason="OFFER_VALIDITY_EMPTY",
                metadata={"offer_id": str(offer_id)},
            )
        if not changes:
            return current
        if "name" in changes and await self._repository.name_taken(session, merged.name, other_than=offer_id):
            raise _name_taken(merged.name)
        return await self._next_version(session, current, changes)

    async def archive(self, session: AsyncSession, offer_id: uuid.UUID) -> Offer:
        """Archive an offer (a new version); an archived offer is answered as it is."""
        current = await self._locked(session, offer_id, 0)
        if current.archive_time is not None:
            return current
        return await self._next_version(session, current, {"archive_time": datetime.now(UTC)})

    async def _locked(self, session: AsyncSession, offer_id: uuid.UUID, expected_version: int) -> Offer:
        current = await self._repository.offer(session, offer_id, lock=True)
        if current is None:
            raise _not_found(offer_id)
        if expected_version and expected_version != current.version:
            raise Aborted(
                message=f"offer {offer_id} is at version {current.version}, not {expected_version}",
                reason="OFFER_VERSION_CHANGED",
                metadata={"offer_id": str(offer_id), "version": str(current.version)},
            )
        return current

    async def _next_version(self, session: AsyncSession, current: Offer, changes: Mapping[str, Any]) -> Offer:
        offer = dataclasses.replace(
            current, **changes, version=current.version + 1, update_time=datetime.now(UTC)
        )
        await self._repository.replace_offer(session, offer)
        return offer


def _fields(new: NewOffer) -> dict[str, Any]:
    return {f.name: getattr(new, f.name) for f in dataclasses.fields(NewOffer)}
