"""The profile of a person: the 360 view, the timeline, traits and consent."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import InvalidArgument, NotFound, Violations
from omni_kit.ids import new_id
from omni_profile import cart, events, paging, persons, repository
from omni_profile.domain import Consent, Event, Profile, Trait

DEFAULT_RECENT_EVENTS = 20
MAX_RECENT_EVENTS = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_SOURCE = "api"


def _bounded(requested: int, default: int, maximum: int) -> int:
    return default if requested == 0 else min(requested, maximum)


def _not_found(person_id: uuid.UUID) -> NotFound:
    return NotFound(
        message=f"no profile for person {person_id}",
        reason="PERSON_NOT_FOUND",
        metadata={"person_id": str(person_id)},
    )


class Profiles:
    """Reads and changes profiles; the caller owns the transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

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
        """The 360 view; NotFound unless the person has an event, a trait or a consent."""
        found = await persons.find_current(session, person_id)
        if found is None:
            raise _not_found(person_id)
        current, event_count = found
        traits = (await repository.load_traits(session, [current]))[current]
        consents = (await repository.load_consents(session, [current]))[current]
        if require_known and event_count == 0 and not traits and not consents:
            raise _not_found(person_id)
        lines = (await repository.load_carts(session, [current]))[current]
        limit = _bounded(recent_events, DEFAULT_RECENT_EVENTS, MAX_RECENT_EVENTS)
        recent = await repository.timeline(session, current, limit) if event_count else []
        return Profile(
            person_id=current,
            traits={name: trait.value for name, trait in traits.items()},
            cart=cart.sorted_lines(lines),
            consents=consents,
            recent_events=recent,
            event_count=event_count,
        )

    async def timeline(
        self, session: AsyncSession, person_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[Event], str]:
        """One page of the timeline, newest first, and the token of the next page ("" at the end)."""
        position = None
        if page_token:
            try:
                position = paging.decode(str(person_id), page_token)
            except paging.BadPageToken as error:
                violations = Violations()
                violations.add("page_token", str(error))
                raise InvalidArgument(message=str(error), violations=violations.items) from error
        found = await persons.find_current(session, person_id)
        if found is None or (found[1] == 0 and not await self._has_state(session, found[0])):
            raise _not_found(person_id)
        size = _bounded(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await repository.timeline(session, found[0], size + 1, position)
        if len(page) <= size:
            return page, ""
        page = page[:size]
        last = page[-1]
        return page, paging.encode(str(person_id), paging.TimelinePosition(last.occurred_at, last.id))

    async def _has_state(self, session: AsyncSession, person_id: uuid.UUID) -> bool:
        traits = await repository.load_traits(session, [person_id])
        consents = await repository.load_consents(session, [person_id])
        return bool(traits[person_id] or consents[person_id])

    async def set_traits(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        values: Mapping[str, Any],
        source: str,
        now: datetime,
    ) -> Profile:
        """Set traits (None removes one) and announce the change if anything changed."""
        current = (await persons.lock_current(session, [person_id]))[person_id]
        existing = (await repository.load_traits(session, [current]))[current]
        source = source or DEFAULT_SOURCE
        upserts: list[Trait] = []
        deletes: list[str] = []
        value_changed = False
        for name, value in values.items():
            before = existing.get(name)
            if value is None:
                if before is not None:
                    deletes.append(name)
                    value_changed = True
            elif before is None or before.value != value or before.source != source:
                upserts.append(Trait(name, value, source, now))
                value_changed = value_changed or before is None or before.value != value
        await repository.write_traits(session, current, upserts, deletes)
        profile = await self.get(session, current, require_known=False)
        if value_changed:
            await events.stage_profile_changed(
                session, self._outbox, current, traits=profile.traits, cart=profile.cart, changed=["traits"]
            )
        return profile

    async def set_consent(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        channel: str,
        state: str,
        source: str,
        now: datetime,
    ) -> Consent:
        """Record a consent answer, keep it in the history and announce it."""
        current = (await persons.lock_current(session, [person_id]))[person_id]
        consent = Consent(channel=channel, state=state, source=source or DEFAULT_SOURCE, updated_at=now)
        await repository.write_consent(session, current, consent)
        await repository.record_consent_change(session, new_id(), current, consent)
        await events.stage_consent_changed(session, self._outbox, current, consent)
        return consent
