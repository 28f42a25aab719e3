"""Reading profiles: the 360 view, the timeline, and the trait and consent histories."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.errors import InvalidArgument, NotFound, Violations
from omni_profile import cart, computed, paging, persons, repository
from omni_profile.domain import Consent, Event, Profile, TraitChange
from omni_profile.models import PROFILE_LINEAGE

DEFAULT_RECENT_EVENTS = 20
MAX_RECENT_EVENTS = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Merges flatten chains, so a read follows one hop; the bound only guards against a cycle.
_MAX_HOPS = 16


def _bounded(requested: int, default: int, maximum: int) -> int:
    return default if requested == 0 else min(requested, maximum)


def not_found(person_id: uuid.UUID) -> NotFound:
    """The error for a person profile does not know."""
    return NotFound(
        message=f"no profile for person {person_id}",
        reason="PERSON_NOT_FOUND",
        metadata={"person_id": str(person_id)},
    )


def _bad_token(error: paging.BadPageToken) -> InvalidArgument:
    violations = Violations()
    violations.add("page_token", str(error))
    return InvalidArgument(message=str(error), violations=violations.items)


class Profiles:
    """Reads profiles; the caller gives the session (reads need no transaction of their own)."""

    def __init__(self, catalog: Callable[[], computed.Catalog], reader: repository.ProfileReader) -> None:
        self._catalog = catalog
        self._reader = reader

    async def shown_persons(self, session: AsyncSession, person_id: uuid.UUID) -> list[uuid.UUID]:
        """Whose data a live person's profile shows: the person and every id merged into it."""
        return [person_id, *await PROFILE_LINEAGE.merged_into(session, [person_id])]

    async def current_person(self, session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID | None:
        """The live person behind an id profile has a row for (following merges), or None."""
        found = await persons.find_current(session, person_id)
        return None if found is None else found[0]

    async def get(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        recent_events: int = 0,
        *,
        require_known: bool = True,
    ) -> Profile:
        """The 360 view as the session sees it (inside a write transaction); see view()."""

        async def read(wanted: uuid.UUID, limit: int) -> repository.ProfileRead | None:
            return await repository.read_profile(session, wanted, limit)

        return await self._assemble(read, person_id, recent_events, require_known)

    async def view(self, person_id: uuid.UUID, recent_events: int = 0) -> Profile:
        """The 360 view, in one statement (two after a merge) on the read pool; NotFound unless the person
        has an event, a trait or a consent."""
        return await self._assemble(self._reader.read_profile, person_id, recent_events, True)

    async def _assemble(
        self,
        read: Callable[[uuid.UUID, int], Awaitable[repository.ProfileRead | None]],
        person_id: uuid.UUID,
        recent_events: int,
        require_known: bool,
    ) -> Profile:
        limit = _bounded(recent_events, DEFAULT_RECENT_EVENTS, MAX_RECENT_EVENTS)
        wanted = person_id
        for _ in range(_MAX_HOPS):
            found = await read(wanted, limit)
            if found is None or found.erased:
                raise not_found(person_id)
            if found.merged_into is None:
                break
            wanted = found.merged_into
        else:
            raise persons.MergeCycle(f"merged_into does not end within {_MAX_HOPS} hops from {person_id}")
        if require_known and found.event_count == 0 and not found.traits and not found.consents:
            raise not_found(person_id)
        return Profile(
            person_id=found.person_id,
            traits={name: trait.value for name, trait in found.traits.items()},
            cart=cart.sorted_lines(found.cart),
            consents=found.consents,
            recent_events=found.recent_events,
            event_count=found.event_count,
            computed_traits=computed.values(self._catalog(), found.computed, datetime.now(UTC)),
            trait_details=found.traits,
            segments=found.segments,
        )

    async def _known(self, session: AsyncSession, person_id: uuid.UUID) -> uuid.UUID:
        """The live person behind an id, NotFound unless profile knows it (as GetProfile would)."""
        profile = await self.get(session, person_id, recent_events=-1)
        return profile.person_id

    async def timeline(
        self, session: AsyncSession, person_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[Event], str]:
        """One page of the timeline, newest first, and the token of the next page ("" at the end)."""
        position = None
        if page_token:
            try:
                position = paging.decode(str(person_id), page_token)
            except paging.BadPageToken as error:
                raise _bad_token(error) from error
        current = await self._known(session, person_id)
        size = _bounded(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await repository.timeline(session, current, size + 1, position)
        if len(page) <= size:
            return page, ""
        page = page[:size]
        last = page[-1]
        return page, paging.encode(
            str(person_id), paging.TimelinePosition(last.occurred_at, last.id, last.source)
        )

    async def trait_history(
        self, session: AsyncSession, person_id: uuid.UUID, name: str, page_size: int, page_token: str
    ) -> tuple[list[TraitChange], str]:
        """One page of trait changes, newest first, and the next page's token."""
        kind = f"traits:{name}"
        position = self._position(str(person_id), kind, page_token)
        current = await self._known(session, person_id)
        size = _bounded(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await repository.trait_changes(session, current, name or None, size + 1, position)
        if len(page) <= size:
            return page, ""
        page = page[:size]
        last = paging.Position(page[-1].changed_at, str(page[-1].id))
        return page, paging.encode_position(str(person_id), kind, last)

    async def consent_history(
        self, session: AsyncSession, person_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[Consent], str]:
        """One page of consent changes, newest first, and the next page's token."""
        position = self._position(str(person_id), "consents", page_token)
        current = await self._known(session, person_id)
        size = _bounded(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await repository.consent_changes(session, current, size + 1, position)
        if len(page) <= size:
            return [c for _, c in page], ""
        page = page[:size]
        change_id, last = page[-1]
        token = paging.encode_position(
            str(person_id), "consents", paging.Position(last.updated_at, str(change_id))
        )
        return [c for _, c in page], token

    @staticmethod
    def _position(owner: str, kind: str, page_token: str) -> paging.Position | None:
        if not page_token:
            return None
        try:
            return paging.decode_position(owner, kind, page_token)
        except paging.BadPageToken as error:
            raise _bad_token(error) from error
